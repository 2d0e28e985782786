"""What a model looks at: every conv layer's feature maps, and Grad-CAM (Selvaraju et al., 2017), where
the last conv layer's evidence for a class lies in the image.

For Grad-CAM the class score's gradient, averaged over each feature map of the last conv layer, weighs that map;
the ReLU of the weighted sum, upsampled to the image, is the heatmap. A short hook-based version
rather than captum's LayerGradCam or the grad-cam package: it is a dozen lines, works for every
model in MODELS and any user model with a Conv2d, and keeps test.py --cam free of extra packages.
"""
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError


def conv_outputs(model: nn.Module, images: torch.Tensor) -> list[tuple[nn.Conv2d, int, torch.Tensor]]:
    """Per Conv2d of the model, in call order: the layer, its input size and its output (C, H, W) for images[0]."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"model {type(model).__name__} has no conv layers to show")
    seen: list[tuple[nn.Conv2d, int, torch.Tensor]] = []
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append((m, i[0].shape[-1], o[0].float().cpu())))
             for c in convs]
    model.eval()
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def last_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """The last Conv2d's feature maps: its name and the module whose output they are.

    That is the activation right after it (past a batch norm), as in the paper's ReLU maps: the raw
    conv output before batch norm can be negative where the evidence is, and its ReLU'd CAM then misses it.
    """
    modules = [(name, m) for name, m in model.named_modules() if not list(m.children())]  # leaves, in order
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"model {type(model).__name__} has no Conv2d layer, so Grad-CAM has nothing to show")
    name, layer = modules[convs[-1]]
    for _, module in modules[convs[-1] + 1:]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if type(module).__module__ == nn.ReLU.__module__:  # torch.nn.modules.activation
            layer = module
        break
    return name, layer


def grad_cam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None, temperature: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (B, H, W) in 0..1 at the input size for the target classes (default: the predicted ones),
    and the probabilities softmax(logits / temperature) (B, num_classes). images are normalised (B, C, H, W)."""
    model.eval()
    _, conv = last_conv(model)
    seen = []
    hook = conv.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.enable_grad():
            logits = model(images)  # (B, num_classes)
            target = logits.argmax(1) if target is None else target
            maps = seen[-1]  # (B, K, h, w)
            grads, = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), maps)
    finally:
        hook.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = F.relu((weights * maps).sum(1, keepdim=True)).detach()  # (B, 1, h, w)
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return cam, (logits.detach().float() / temperature).softmax(1)


def overlay(image: torch.Tensor, heat: torch.Tensor, scale: int = 1) -> np.ndarray:
    """The uint8 image (C, H, W) under the heatmap (H, W) in the jet colour map, as uint8 RGB (sH, sW, 3)."""
    if scale > 1:  # pixels stay sharp, the heatmap stays smooth
        image = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        heat = F.interpolate(heat[None, None], scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).cpu().float().numpy() / 255  # grey -> 3 channels
    colour = matplotlib.colormaps["jet"](heat.clamp(0, 1).cpu().numpy())[..., :3]
    return (255 * (0.5 * rgb + 0.5 * colour)).round().astype(np.uint8)
