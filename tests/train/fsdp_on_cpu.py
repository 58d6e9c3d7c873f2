"""Train the tiny SDXL under FSDP on CPU: a test driver, not a supported way to run.

    accelerate launch --config_file FSDP_YAML --num_processes 2 tests/train/fsdp_on_cpu.py OUT [--resume]

accelerate (1.15) turns FSDP on only for GPU-like devices, so on a CPU it would run plain data
parallelism. This driver flips its state to FSDP after it is built (torch's FSDP itself runs on CPU
with gloo) and gathers full state dicts without ``offload_to_cpu``, which on CPU frees storage that
is still in use (a segfault; Lightning-AI/pytorch-lightning#21804). The run is the library's own
training loop (checkpoints with per-process optimiser shards, resume through the wrappers) on the
tiny SDXL with a full-copy TA and a generator with its own network: the library refuses, under
FSDP, a LoRA TA or a generator over the reference's shared frozen base, whose network the FSDP
wrapper does not hold. The diffusers-format export is left out (it deep-copies the
generator's network, which holds FSDP-wrapped blocks); the loop's own export is compared.
FSDP_YAML is configs/accelerate/fsdp.yaml with sync_module_states and cpu_ram_efficient_loading
off (both need an accelerator device).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import accelerate.state as state
import torch
import torch.distributed.fsdp as torch_fsdp
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__
_full = torch_fsdp.FullStateDictConfig


def _fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin")
        self.device = torch.device("cpu")  # FSDP checks device_id against its CPU compute device, "cpu"
        state.PartialState._shared_state.update(distributed_type=DistributedType.FSDP, device=self.device)


state.AcceleratorState.__init__ = _fsdp_on_cpu
torch_fsdp.FullStateDictConfig = lambda offload_to_cpu=False, rank0_only=False: _full(offload_to_cpu=False, rank0_only=rank0_only)


def main(out: Path, resume: bool) -> None:
    import didr.train.distributed as distributed
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.text_to_image import build
    from didr.objectives.config import build_objective
    from didr.train.loop import Alignment, Trainer

    distributed.check_sharded_launch = lambda: None  # the refusal this driver exists to get past
    root = Path(__file__).resolve().parents[2]
    sets = ["train.steps=6", "train.checkpoint_every=2", "backbone.ta_lora_rank=0", "backbone.share_base=false"]
    cfg = cfgio.load(RunConfig, root / "configs" / "tiny-sdxl.yaml", sets)
    t2i = build(cfg.backbone, out)
    objective = build_objective(cfg.method, t2i.generator.schedule, t2i.reward)
    trainer = Trainer(Alignment(t2i.generator, t2i.reference, t2i.ta, objective, t2i.sample_inputs), cfg.train, out, resume=resume,
                      run_config=cfgio.to_dict(cfg))
    trainer.run()


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--resume" in sys.argv[2:])
