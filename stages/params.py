"""Stage `params`: validate the whole params file on every `dvc repro` that changes any of it.

Every stage validates `params.yaml` before it works, but a change that no stage tracks (a
misspelled top-level key, say) reruns no stage; this one depends on the whole file, so such a
change stops `dvc repro` with the key named. It writes nothing, so no other stage depends on it.
"""

from _common import stage, stage_params


def main() -> None:
    params, _ = stage_params({})
    with stage("params", threads=params.threads):
        print(f"[params] params.yaml is valid: profile {params.profile}, {len(params.models)} model(s), "
              f"{len(params.setups)} setup(s), {len(params.methods)} method(s)")


if __name__ == "__main__":
    main()
