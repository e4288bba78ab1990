"""AnyTalker two-stage training (imports anytalker_core, never ComfyUI).

* :mod:`train.prepare` — clips → filtered, encoded samples on disk (the only stage with encoders)
  (:mod:`train.clips` finds the clips, :mod:`train.clip_windows` cuts them into windows, :mod:`train.encode`
  encodes and writes a sample, :mod:`train.prepare_report` the report and earlier drops)
* :mod:`train.cache` — the cached sample, its two on-disk layouts, the index read once per run
* :mod:`train.shards` — tar shards with an index: writer (prepare, ``pack``) and reader
* :mod:`train.data` — cached samples → batches, stage 1's side-by-side two-person concatenation
* :mod:`train.buckets` — resolution buckets and the resumable, distributed bucket batch sampler
* :mod:`train.flow` — flow-matching loss pieces (shifted timesteps, noising, velocity target)
* :mod:`train.trainer` — the accelerate training loop (both stages); :mod:`train.trainer_setup` — its set-up
  (accelerate, data, CLIP, optimiser, LR schedule); :mod:`train.model` — the DiT a run trains
* :mod:`train.checkpointing` — atomic checkpoints, resume, export to the inference format
* :mod:`train.parallel` — FSDP2 (meta-device build, sharded checkpoints); :mod:`train.sequence_parallel`
  — one sample's tokens over several processes (Ulysses all-to-all); :mod:`train.memory` — memory per GPU
* :mod:`train.validation` — validation samples from cached conditioning
* :mod:`train.cli` — ``anytalker-train prepare | fit | export | memory | pack``

See docs/training.md.
"""
