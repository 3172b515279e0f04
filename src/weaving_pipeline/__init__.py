"""The pipeline side of `weaving`: what the DVC stages share and the library does not know.

- `weaving_pipeline.params`: the schema of `params.yaml` (validated before any stage works);
- `weaving_pipeline.paths`: the file layout every stage reads and writes (mirrored by `dvc.yaml`);
- `weaving_pipeline.stage`: the stage wrapper (clean one-line errors, a summary line) and the
  helpers that load the pipeline's checkpoints.

The library (`weaving`) never imports this package.
"""
