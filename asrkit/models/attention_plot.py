"""Pictures of an attention model's alignment: output tokens down, encoder frames across, dark = attended.
A PNG through matplotlib when it is installed, else written directly (grayscale, a built-in 3x5 pixel font)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from asrkit.data.tokenizer import Tokenizer


def token_labels(tokens: Sequence[int], tokenizer: Tokenizer, ended: bool = True) -> list[str]:
    """Row labels for `plot_attention`: each token's piece ('_' for a space), then '</s>' when it ended."""
    labels = [tokenizer.vocab[t].replace(" ", "_").replace("\u2581", "_") for t in tokens]
    return labels + ["</s>"] if ended else labels


def plot_attention(weights: torch.Tensor, tokens: Sequence[str], path: str | Path) -> Path:
    """Write the attention alignment (U, T') -- output tokens down, listener frames across, dark = attended --
    as a PNG: with matplotlib when it is installed, else a grayscale image with a built-in 3x5 pixel font."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = weights.detach().float().cpu()
    if w.ndim != 2 or w.shape[0] != len(tokens):
        raise ValueError(f"weights {tuple(w.shape)} must be (U, T') with one row per token ({len(tokens)} tokens)")
    try:
        import matplotlib
    except ImportError:
        path.write_bytes(_attention_png(w, tokens))
        return path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, w.shape[1] / 8), max(2.0, len(tokens) / 4)))
    ax.imshow(w.numpy(), aspect="auto", cmap="gray_r", interpolation="nearest", vmin=0.0)
    ax.set_yticks(range(len(tokens)), list(tokens))
    ax.set_xlabel("listener frame")
    ax.set_ylabel("output token")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# 3x5 glyphs, one octal digit per row (4 = left pixel, 2 = middle, 1 = right).
_FONT = dict(zip(
    "abcdefghijklmnopqrstuvwxyz0123456789 _'<>/-.?",
    "25755 65656 34443 65556 74647 74644 34553 55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 "
    "34216 72222 55557 55552 55775 55255 55222 71247 75557 26227 61247 61216 55711 74616 34652 71222 25252 25316 "
    "00000 00007 22000 12421 42124 11244 00700 00002 61202".split(), strict=True))


def _attention_png(w: torch.Tensor, tokens: Sequence[str], scale: int = 2) -> bytes:
    u, t = w.shape
    cell_w = max(2, min(12, 480 // max(t, 1)))
    row_h = 6 * scale + 2
    label_w = 4 * scale * min(6, max((len(s) for s in tokens), default=1)) + 4
    width, height = label_w + cell_w * t, row_h * u
    peak = float(w.max()) or 1.0
    pixels = bytearray(b"\xff" * (width * height))
    for r in range(u):
        for c in range(t):
            shade = 255 - round(255 * min(float(w[r, c]) / peak, 1.0))
            for y in range(r * row_h, (r + 1) * row_h):
                start = y * width + label_w + c * cell_w
                pixels[start : start + cell_w] = bytes([shade]) * cell_w
        for n, ch in enumerate(tokens[r][:6].lower()):
            for gy, bits in enumerate(_FONT.get(ch, _FONT["?"])):
                for gx in range(3):
                    if int(bits) >> (2 - gx) & 1:
                        for dy in range(scale):
                            y = r * row_h + 1 + gy * scale + dy
                            x = 2 + n * 4 * scale + gx * scale
                            pixels[y * width + x : y * width + x + scale] = b"\x00" * scale
    raw = b"".join(b"\x00" + bytes(pixels[y * width : (y + 1) * width]) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
