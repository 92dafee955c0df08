"""ResNet-50/101/152 (He et al., 2015) for ImageNet, written by hand with the layout of torchvision.

Bottleneck blocks (1x1 reduce, 3x3, 1x1 expand, x4) with the stride on the 3x3 convolution
("ResNet v1.5", as torchvision and most deployments use). BatchNorm runs in eval mode, so it is an
affine map with fixed statistics, the form a deployment folds into the convolution.

    workload()                          # ResNet-50, 1 x 3 x 224 x 224, fp32, meta
    workload(depth=152, batch=32, dtype="fp16")
    workload(image=64, device="cpu")    # small enough to run on CPU in tests
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path, not from a package: make _common.py beside it importable
    sys.path.insert(0, _HERE)
from _common import build, pick, to_dtype  # noqa: E402

# Bottleneck blocks per stage, Table 1 of the paper (arXiv:1512.03385).
DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # a bottleneck's output has 4x the channels of its 3x3 convolution


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * EXPANSION
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        # A 1x1 projection when the shortcut changes shape (first block of each stage).
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))    # (B, width, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))          # (B, 4*width, H/s, W/s)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], n_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, c_in = [], 64
        for i, n in enumerate(blocks):
            width = 64 * 2 ** i  # 64, 128, 256, 512
            stride = 1 if i == 0 else 2  # stage 1 follows the max-pool, which already halved H, W
            stage = []
            for j in range(n):
                stage.append(Bottleneck(c_in, width, stride if j == 0 else 1))
                c_in = width * EXPANSION
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> class logits (B, n_classes)."""
        x = F.relu(self.bn1(self.conv1(images)))             # (B, 64, H/2, W/2)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (B, 64, H/4, W/4)
        x = self.layer1(x)                                   # (B, 256, H/4, W/4)
        x = self.layer2(x)                                   # (B, 512, H/8, W/8)
        x = self.layer3(x)                                   # (B, 1024, H/16, W/16)
        x = self.layer4(x)                                   # (B, 2048, H/32, W/32)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)    # (B, 2048)
        return self.fc(x)                                    # (B, n_classes)


def workload(depth: int = 50, batch: int = 1, image: int = 224, dtype: str = "fp32", device: str = "meta"):
    """(model, (images,)) for one forward over batch images of image x image pixels."""
    blocks = pick(DEPTHS, int(depth), "depth")
    model = build(lambda: ResNet(blocks), device, dtype)
    images = torch.randn(batch, 3, image, image, dtype=to_dtype(dtype), device=device)
    return model, (images,)
