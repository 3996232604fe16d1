"""Fine-tuning the last k transformer blocks of a CLIP tower (seed 003's next stage after heads).

Everything but the last ``blocks`` encoder layers of the chosen tower (and its final norm and
projection) stays frozen; the loss is the adapters' symmetric InfoNCE on (image, title) pairs, through
the served pixel transform and tokenizer. On a GPU it runs with automatic mixed precision (bf16 autocast
where supported, else fp16 with a gradient scaler). On a CPU it refuses full-size towers: a ViT-B/32
step there costs seconds per batch, which is a benchmark, not a training run (tiny towers run, for tests).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vitrine.pixels import pixel_values_of
from vitrine.tokenization import ClipTokenizer

CHECKPOINT = Path("checkpoints/clip")
TOKENIZER = Path("tokenizers/clip/tokenizer.json")
CPU_MAX_HIDDEN = 128
"""Widest tower fine-tuned on a CPU (the tiny test configs are 64)."""


class FinetuneError(RuntimeError):
    pass


@dataclass(frozen=True)
class FinetuneSpec:
    tower: str = field(default="image", metadata={"help": "image or text"})
    blocks: int = field(default=2, metadata={"help": "last transformer blocks unfrozen"})
    steps: int = field(default=200, metadata={"help": "optimiser steps"})
    batch: int = field(default=64, metadata={"help": "pairs per step"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto, cuda or cpu"})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def load_clip(artifacts: Path) -> Any:
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(artifacts / CHECKPOINT, attn_implementation="eager")


def trainable(clip: Any, spec: FinetuneSpec) -> list[str]:
    """Freeze everything, then unfreeze the tower's last ``blocks`` layers, final norm and projection;
    returns the trainable parameter names."""
    for p in clip.parameters():
        p.requires_grad_(False)
    model = clip.vision_model if spec.tower == "image" else clip.text_model
    layers = model.encoder.layers
    if not 1 <= spec.blocks <= len(layers):
        raise FinetuneError(f"blocks must be in 1..{len(layers)} for this tower, got {spec.blocks}")
    modules = [*layers[len(layers) - spec.blocks :]]
    modules.append(model.post_layernorm if spec.tower == "image" else model.final_layer_norm)
    modules.append(clip.visual_projection if spec.tower == "image" else clip.text_projection)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    return [n for n, p in clip.named_parameters() if p.requires_grad]


def finetune(
    artifacts: Path,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    spec: FinetuneSpec,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune and return the model and a report (losses, trainable parameters, device, AMP)."""
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    clip = load_clip(artifacts)
    hidden = (
        clip.config.vision_config.hidden_size
        if spec.tower == "image"
        else clip.config.text_config.hidden_size
    )
    if device.type == "cpu" and hidden > CPU_MAX_HIDDEN:
        raise FinetuneError(
            f"fine-tuning a {hidden}-wide tower needs a GPU (device {device}); on a CPU only tiny towers "
            "run (tests); train adapter heads instead (vitrine adapt train)"
        )
    names = trainable(clip, spec)
    clip.to(device).train()
    tok = ClipTokenizer.from_file(artifacts / TOKENIZER)
    pixels = torch.from_numpy(np.stack([pixel_values_of(im) for im in images]))
    params = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr)
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype is torch.float16)
    rng = np.random.default_rng(spec.seed)
    losses = []
    t0 = time.perf_counter()
    for _ in tqdm(range(spec.steps), desc=f"finetune {spec.tower}", disable=not progress):
        idx = rng.choice(len(images), size=min(spec.batch, len(images)), replace=False)
        enc = tok.encode_batch([texts[i] for i in idx])
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            img = _normalise(
                clip.visual_projection(clip.vision_model(pixel_values=pixels[idx].to(device)).pooler_output)
            )
            hid = clip.text_model(input_ids=torch.from_numpy(enc.input_ids).to(device)).last_hidden_state
            eot = torch.from_numpy(enc.eot_index).to(device).unsqueeze(-1).expand(-1, -1, hid.shape[-1])
            txt = _normalise(clip.text_projection(torch.gather(hid, 1, eot).squeeze(1)))
            logits = clip.logit_scale.exp() * txt.float() @ img.float().T
            target = torch.arange(len(idx), device=device)
            loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)
            )
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    clip.eval()
    report = {
        "spec": asdict(spec),
        "device": str(device),
        "amp": str(dtype).replace("torch.", "") if amp else "off",
        "trainable_parameters": sum(p.numel() for p in params),
        "trainable_tensors": len(names),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return clip, report
