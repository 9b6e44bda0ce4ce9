"""What the trainer prints: one line per student and epoch."""
from __future__ import annotations


def epoch_line(label: str, row: dict, epochs: int) -> str:
    terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("loss_"))
    val = f"  val {row['val_top1']:.2f}%" if "val_top1" in row else ""
    return (f"[bold]{label}[/] epoch {row['epoch']}/{epochs}  loss {row['loss']:.3f} ({terms})  "
            f"train {row['train_top1']:.1f}%{val}  test {row['test_top1']:.2f}% (top-5 {row['test_top5']:.1f}%)  "
            f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")
