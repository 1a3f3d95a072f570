"""Video Transformer Network baseline: 2D CNN per frame + temporal transformer with a cls token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.baselines import BASELINE_INFO, count_params, create_baseline, gflops_per_clip


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_vtn_structure_order_and_shapes():
    torch.manual_seed(0)
    m = create_baseline("vtn", num_classes=5, num_frames=6, img_size=16, embed_dim=32, depth=1, num_heads=4)
    info = BASELINE_INFO["vtn"]
    assert info["family"] == "transformer" and info["order_aware"] and not info["needs_flow"]
    assert len(m.blocks) == 1 and m.pos_embed.shape == (1, 7, 32) and m.cls_token.shape == (1, 1, 32)
    video = torch.randn(3, 3, 6, 16, 16)
    m.eval()
    with torch.no_grad():
        out = m(video)
        assert out.shape == (3, 5) and torch.isfinite(out).all()
        # the spatial backbone sees each frame alone: features of frame t do not depend on other frames
        f = m.frame_features(video)
        g = m.frame_features(torch.cat([video[:, :, :3], torch.randn(3, 3, 3, 16, 16)], 2))
        assert torch.allclose(f[:, :3], g[:, :3], atol=1e-5) and f.shape == (3, 6, m.num_features)
        # order matters (temporal transformer + position embedding)
        assert not torch.allclose(m(video.flip(2)), out, atol=1e-5)
        assert m(video[:, :, :4]).shape == (3, 5)  # shorter clips run too
    with pytest.raises(ValueError, match="at most 6 frames"):
        m(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        create_baseline("vtn", embed_dim=30, num_heads=4)
    m.train()
    loss = F.cross_entropy(m(video), torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert count_params(m) > 0 and gflops_per_clip(m, 6, 16) > 0
