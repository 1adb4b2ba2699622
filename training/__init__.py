"""Training: distil an LCM-LoRA (LCD, guidance distillation, reward-guided LCD) on a generic loop.

`loop.train` is the reusable engine (accelerate, checkpoints, resume, logs); `distill` is the
LCM-LoRA objective on top of it; the LoRA file is written by `lora_merge.writer`. Heavy imports
(accelerate, peft) happen only when a run starts.
"""

from .distill import MODES, DistillSettings, LCMDistillTask
from .guidance import cfg_combine, guidance_distillation_loss, teacher_cfg_output
from .lcd import LCDSettings, ddim_solver_grid, draw_lcd_inputs, lcd_loss
from .loop import LoopConfig, StepContext, TrainResult, make_accelerator, train

__all__ = [
    "MODES",
    "DistillSettings",
    "LCDSettings",
    "LCMDistillTask",
    "LoopConfig",
    "StepContext",
    "TrainResult",
    "cfg_combine",
    "ddim_solver_grid",
    "draw_lcd_inputs",
    "guidance_distillation_loss",
    "lcd_loss",
    "make_accelerator",
    "teacher_cfg_output",
    "train",
]
