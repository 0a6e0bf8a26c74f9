import pytest
import torch

from torchrec_lhf.clustering import check_projection, project, projection

EMB = torch.tensor([[0.0, 5.0, -1.0], [1.0, 7.0, -2.0], [2.0, 6.0, -3.0]])


def test_dim_specs():
    assert project(EMB, "dim:1").tolist() == [[5.0, 7.0, 6.0]]
    # With H hash functions, dim:k uses coordinates k..k+H-1.
    assert project(EMB, "dim:0", 2).tolist() == [[0.0, 1.0, 2.0], [5.0, 7.0, 6.0]]
    assert project(EMB, "dim:2,0", 2).tolist() == [[-1.0, -2.0, -3.0], [0.0, 1.0, 2.0]]
    assert project(EMB.double(), "dim:0").dtype == torch.float32


def test_pca_recovers_the_main_axis_with_fixed_sign():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2000, generator=g)
    axis = torch.tensor([0.6, -0.8])  # largest-magnitude loading is negative -> flipped
    emb = t[:, None] * axis * 10 + 0.01 * torch.randn(2000, 2, generator=g) + 3.0
    values = project(emb, "pca")
    assert values.shape == (1, 2000)
    # Component sign: -axis (its largest loading, 0.8, made positive), so values ~ -10 t.
    assert torch.allclose(values[0], -10 * (t - t.mean()), atol=0.05)


def test_pca_two_components_and_chunking(monkeypatch):
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 2.0, 0.5])
    full = project(emb, "pca", 2)
    assert full.shape == (2, 500)
    assert abs(float(full[0] @ full[1])) < 1e-2 * float(full[0].norm() * full[1].norm())
    assert float(full[0].var()) > float(full[1].var())
    monkeypatch.setattr(projection, "_CHUNK_ROWS", 7)
    assert torch.allclose(project(emb, "pca", 2), full, atol=1e-5)


@pytest.mark.parametrize(
    "emb, spec, h, match",
    [
        (EMB, "dim:3", 1, "teacher dim is 3"),
        (EMB, "dim:2", 2, r"coordinates \[2, 3\]"),
        (EMB, "dim:0,1", 3, "names 2 coordinates"),
        (EMB, "dim:x", 1, "integers"),
        (EMB, "pca", 4, "teacher dim >= 4"),
        (EMB, "tsne", 1, "unknown projection 'tsne'"),
        (EMB, "pca", 0, "num_hashes"),
        (EMB[0], "pca", 1, "2-D"),
        (torch.tensor([[float("inf")]]), "pca", 1, "finite"),
        (EMB.long(), "pca", 1, "floating"),
    ],
)
def test_bad_projection_raises(emb, spec, h, match):
    with pytest.raises(ValueError, match=match):
        project(emb, spec, h)
    if emb is EMB and h >= 1:  # the same refusal without embeddings, by the teacher's dim
        with pytest.raises(ValueError, match=match):
            check_projection(spec, h, EMB.shape[1])


def test_check_projection_passes_what_project_takes():
    for spec, h in (("pca", 3), ("dim:0", 3), ("dim:2", 1), ("dim:2,0", 2)):
        check_projection(spec, h, 3)
        assert project(EMB, spec, h).shape == (h, EMB.shape[0])
