"""SafeLoRA (Hsu et al. 2024) and the shared alignment matrix: hand computations on 2x2 weights.

The alignment direction of every test module below is V = [[3, 0], [4, 0]] (‖V‖_F = 5), so
C = V Vᵀ / ‖V‖_F = [[1.8, 2.4], [2.4, 3.2]] (dividing by ‖V‖² would give the projection
[[.36, .48], [.48, .64]] instead).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from pact.methods.alignment import AlignmentMatrix, alignment_matrices, lora_module_name, lora_pairs, module_weights
from pact.methods.safe_lora import SafeLoRA, project_adapter, round_cosine, select_layers, update_cosine

V = torch.tensor([[3.0, 0.0], [4.0, 0.0]])
BASE = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
ALIGNED = BASE + V


def align() -> AlignmentMatrix:
    return AlignmentMatrix.from_weights(ALIGNED, BASE, "m")


def test_alignment_matrix_divides_by_the_norm_not_its_square():
    c = align().dense()
    assert align().norm == pytest.approx(5.0)
    assert torch.allclose(c, torch.tensor([[1.8, 2.4], [2.4, 3.2]]), atol=1e-6)
    m = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    assert torch.allclose(align().apply(m), c @ m, atol=1e-6)  # C M without forming C


def test_alignment_pairs_modules_by_name_and_names_the_culprit():
    aligned = {"model.layers.0.q": ALIGNED, "model.layers.1.q": ALIGNED * 2}
    base = {"model.layers.1.q": BASE * 2, "model.layers.0.q": BASE}  # other order
    mats = alignment_matrices(aligned, base)
    assert mats["model.layers.1.q"].norm == pytest.approx(10.0) and mats["model.layers.0.q"].norm == pytest.approx(5.0)
    with pytest.raises(ValueError, match="model.layers.1.q"):
        alignment_matrices(aligned, {"model.layers.0.q": BASE})
    with pytest.raises(ValueError, match="identical"):
        alignment_matrices({"x": BASE}, {"x": BASE.clone()})
    with pytest.raises(ValueError, match="differ in shape"):
        alignment_matrices({"x": BASE}, {"x": torch.zeros(3, 2)})


def test_lora_parameter_names():
    assert lora_module_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == (
        "model.layers.0.self_attn.q_proj", "A")
    assert lora_module_name("model.base_model.model.model.layers.3.self_attn.v_proj.lora_B.default.weight") == (
        "model.layers.3.self_attn.v_proj", "B")
    assert lora_module_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") is None
    with pytest.raises(ValueError, match="only one factor"):
        lora_pairs([("base_model.model.x.lora_A.weight", torch.zeros(1))])


def test_cosine_and_projection_by_hand():
    # layer "keep": B = [1, 0]ᵀ, A = [1, 2]: ΔW = [[1, 2], [0, 0]], CΔW = [[1.8, 3.6], [2.4, 4.8]]
    #   cos = (1.8 + 7.2) / (√45 · √5) = 9 / 15 = 0.6 > 0.5: kept
    # layer "proj": B = [1, -1]ᵀ, A = [1, 0]: ΔW = [[1, 0], [-1, 0]], CΔW = [[-0.6, 0], [-0.8, 0]]
    #   cos = (-0.6 + 0.8) / (1 · √2) = 0.141421 <= 0.5: B <- C B = [-0.6, -0.8]ᵀ
    a_keep, b_keep = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0]])
    a_proj, b_proj = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [-1.0]])
    assert update_cosine(a_keep, b_keep, align()) == pytest.approx(0.6, abs=1e-6)
    assert update_cosine(a_proj, b_proj, align()) == pytest.approx(0.2 / math.sqrt(2), abs=1e-6)
    prefix = "base_model.model.model.layers"
    weights = {  # peft's saved layout; B listed before A and the layers in reverse, on purpose
        f"{prefix}.1.self_attn.q_proj.lora_B.weight": b_proj, f"{prefix}.1.self_attn.q_proj.lora_A.weight": a_proj,
        f"{prefix}.0.self_attn.q_proj.lora_B.weight": b_keep, f"{prefix}.0.self_attn.q_proj.lora_A.weight": a_keep,
        "some.other.tensor": torch.ones(3),
    }
    alignment = {"model.layers.0.self_attn.q_proj": align(), "model.layers.1.self_attn.q_proj": align()}
    out, records = project_adapter(weights, alignment, select="threshold", threshold=0.5)
    assert [(r.module, r.projected) for r in records] == [("model.layers.0.self_attn.q_proj", False),
                                                          ("model.layers.1.self_attn.q_proj", True)]
    assert [r.cosine for r in records] == [0.6, 0.14142]          # rounded to 5 decimals, as compared
    assert torch.allclose(out[f"{prefix}.1.self_attn.q_proj.lora_B.weight"], torch.tensor([[-0.6], [-0.8]]), atol=1e-6)
    assert torch.equal(out[f"{prefix}.0.self_attn.q_proj.lora_B.weight"], b_keep)
    for key in (f"{prefix}.1.self_attn.q_proj.lora_A.weight", f"{prefix}.0.self_attn.q_proj.lora_A.weight",
                "some.other.tensor"):
        assert torch.equal(out[key], weights[key])
    # the threshold is inclusive (cos <= threshold), and 0.6 is then projected too
    _, records = project_adapter(weights, alignment, select="threshold", threshold=0.6 + 1e-6)
    assert all(r.projected for r in records)
    # selection by number: the single lowest cosine
    _, records = project_adapter(weights, alignment, select="number", num_layers=1, threshold=-1.0)
    assert [r.projected for r in records] == [False, True]
    # the defaults are the authors' (number, N = 10): with two layers both are projected
    _, records = project_adapter(weights, alignment)
    assert [r.projected for r in records] == [True, True]


def test_cosine_rounding_as_the_authors_code():
    """numpy.round(cos, 5) before the comparison: 0.500004 counts as 0.5 and is projected at threshold 0.5."""
    assert round_cosine(0.500004, 5) == 0.5 and round_cosine(0.500005001, 5) == 0.50001
    assert round_cosine(0.500004, None) == 0.500004
    assert round_cosine(-0.1234567, 3) == -0.123
    cos = {"a": 0.500004, "b": 0.6}
    rounded = {m: round_cosine(c, 5) for m, c in cos.items()}
    assert select_layers(rounded, "threshold", 0.5, 10) == {"a"}
    assert select_layers(cos, "threshold", 0.5, 10) == set()


def test_number_selection_ties_at_the_nth_cosine():
    """N = 2 over cosines 0.1, 0.2, 0.2, 0.3: the authors project every layer with cos <= the 2nd lowest (three);
    ties="name" takes two. Rounding can make the tie: 0.200001 and 0.2000004 both round to 0.2."""
    cos = {"d": 0.3, "c": 0.2, "b": 0.2, "a": 0.1}
    assert select_layers(cos, "number", 0.5, 2) == {"a", "b", "c"}
    assert select_layers(cos, "number", 0.5, 2, ties="name") == {"a", "b"}
    assert select_layers(cos, "number", 0.5, 1) == {"a"}
    assert select_layers(cos, "number", 0.5, 10) == {"a", "b", "c", "d"}      # N above the layer count: all
    near = {"a": 0.1, "b": 0.200001, "c": 0.2000004}
    assert select_layers(near, "number", 0.5, 2) == {"a", "c"}
    assert select_layers({m: round_cosine(c, 5) for m, c in near.items()}, "number", 0.5, 2) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="ties='first'"):
        select_layers(cos, "number", 0.5, 2, ties="first")


def test_project_dir_keeps_the_unprojected_adapter_and_records_the_layers(tmp_path):
    """The file-level step of the driver on a tiny peft adapter, against a recomputation from the two models."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from pact.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    aligned, base = tiny_model(tok, seed=0), tiny_model(tok, seed=0)
    with torch.no_grad():
        for name, p in base.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    aligned.save_pretrained(tmp_path / "aligned")
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(aligned, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "final")
    method = SafeLoRA(str(tmp_path / "aligned"), str(tmp_path / "base"), select="number", num_layers=2)
    records = method.project_dir(run)
    raw = load_file(str(run / "final_unprojected" / "adapter_model.safetensors"))
    new = load_file(str(run / "final" / "adapter_model.safetensors"))
    report = json.loads((run / "safe_lora.json").read_text())
    assert report["projected"] == 2 and len(report["layers"]) == 4 == len(records)
    names = [r["module"] for r in report["layers"]]
    want_aligned = module_weights(tiny_model(tok, seed=0), names)
    for layer in report["layers"]:
        key = f"base_model.model.{layer['module']}.lora_"
        c = AlignmentMatrix.from_weights(want_aligned[layer["module"]],
                                         dict(base.named_parameters())[layer["module"] + ".weight"]).dense()
        a, b = raw[key + "A.weight"], raw[key + "B.weight"]
        cos = torch.nn.functional.cosine_similarity((c @ b @ a).flatten(), (b @ a).flatten(), dim=0).item()
        assert layer["cosine"] == pytest.approx(cos, abs=1e-5)
        assert torch.allclose(new[key + "B.weight"], c @ b if layer["projected"] else b, atol=1e-6)
        assert torch.equal(new[key + "A.weight"], a)
    lowest = sorted(report["layers"], key=lambda r: r["cosine"])[:2]
    assert {r["module"] for r in lowest} == {r["module"] for r in report["layers"] if r["projected"]}


def test_finish_reports_a_failed_projection(tmp_path):
    method = SafeLoRA(str(tmp_path / "aligned"), str(tmp_path / "base"))
    with pytest.raises(RuntimeError, match="safe_lora projection of .*final failed: FileNotFoundError.*lora=true"):
        method.finish(tmp_path, rank=0)
    # an exported adapter whose alignment cannot be built (no such models): the export is kept aside as
    # final_unprojected/, and no final/ is left behind that would pass for a projected adapter
    (tmp_path / "final").mkdir()
    from safetensors.torch import save_file

    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(4, 2)},
              str(tmp_path / "final" / "adapter_model.safetensors"))
    with pytest.raises(RuntimeError, match="safe_lora projection"):
        method.finish(tmp_path, rank=0)
    assert not (tmp_path / "final").exists() and not (tmp_path / "final.tmp").exists()
    assert (tmp_path / "final_unprojected" / "adapter_model.safetensors").is_file()
