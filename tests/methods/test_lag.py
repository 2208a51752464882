"""LAG on the tiny model: spectral factors, routing, batching, persistence and peft folders."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import random_bank
from tiny import tiny_model

from polyprag import (AdapterLibrary, BankMixture, Document, IncompatibleModelError, InvalidInputError,
                      LibraryError, PolyPRAG, SumMixture)
from polyprag.methods.lag import LAGLibrary, LAGRouter, spectral_factors
from polyprag.library.state import LibraryConfig


def _prag_library(llm, m: int, seed: int = 0, rank: int = 2) -> AdapterLibrary:
    """A per-document library of m random adapters (one per invented document)."""
    bank = random_bank(llm, m, rank=rank, seed=seed)
    docs = [Document(id=f"doc-{i}", text=f"fact {i}") for i in range(m)]
    cfg = LibraryConfig(kind="prag", rank=rank, alpha=bank.alpha, m=m,
                        target_modules=list(llm.target_modules), base_model=llm.fingerprint())
    return AdapterLibrary(llm, bank, docs, cfg)


def _ids(rows: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, 60, (rows, length), generator=gen)  # real words of the tiny vocabulary


def test_spectral_factors_reproduce_every_adapter_delta(llm):
    library = _prag_library(llm, 5, rank=3)
    lag = LAGLibrary.from_adapter_library(library)
    bank = library.bank
    for module in bank.names:
        A, B = bank.factors(module)
        for j in range(bank.m):
            A_star, B_star = lag.factors(module, j)
            torch.testing.assert_close(B_star @ A_star, bank.scale * B[j] @ A[j], atol=1e-4, rtol=0)
            # A* = Vᵀ has orthonormal rows; B* = U S has orthogonal columns of decreasing norm
            torch.testing.assert_close(A_star @ A_star.T, torch.eye(3), atol=1e-5, rtol=0)
            norms = B_star.norm(dim=0)
            assert torch.all(norms[:-1] >= norms[1:])


def test_spectral_factors_match_a_full_svd():
    gen = torch.Generator().manual_seed(1)
    A, B = torch.randn(4, 50, generator=gen), torch.randn(40, 4, generator=gen)
    A_star, B_star = spectral_factors(A, B, scale=2.0)
    S = torch.linalg.svdvals(2.0 * (B @ A).double())[:4].float()
    torch.testing.assert_close(B_star.norm(dim=0), S, atol=1e-4, rtol=1e-5)
    top_right = torch.linalg.svd(2.0 * (B @ A).double())[2][0].float()
    assert abs(float(A_star[0] @ top_right)) == pytest.approx(1.0, abs=1e-5)  # arrow vector, up to sign


@pytest.mark.parametrize("variant", ["arrow_spectr", "arrow", "spectr"])
def test_library_of_one_adapter_equals_that_adapter_alone(llm, variant):
    library = _prag_library(llm, 3)
    only = AdapterLibrary(llm, _slice_bank(library.bank, 1), [library.documents[1]],
                          copy.deepcopy(library.config))
    router = LAGRouter(LAGLibrary.from_adapter_library(only), k=3, variant=variant)
    ids = _ids()
    alone = llm.logits(ids, mixture=BankMixture(library.bank, torch.tensor([0.0, 1.0, 0.0])))
    torch.testing.assert_close(llm.logits(ids, mixture=router), alone, atol=1e-4, rtol=1e-4)
    assert (alone - llm.logits(ids)).abs().max() > 1e-3  # the adapter does change the output


def test_tokens_along_an_arrow_vector_route_to_its_adapter(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 6))
    for variant in ("arrow_spectr", "spectr", "arrow"):
        router = LAGRouter(lag, k=3, variant=variant)
        for module in list(lag.modules)[:3]:
            for j in range(len(lag)):
                a_star = lag.factors(module, j)[0][0]  # arrow vector of adapter j
                x = torch.stack([a_star * c for c in (0.5, 3.0, -2.0)])[None]  # [1, 3 tokens, in]
                adapters, weights = router.route(module, x)
                top = adapters.gather(1, weights.argmax(-1, keepdim=True))[:, 0]
                assert top.tolist() == [j, j, j], (variant, module, j)


def test_router_output_is_the_winning_adapters_delta(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 4))
    router = LAGRouter(lag, k=2)
    module = next(iter(lag.modules))
    x = torch.randn(2, 5, llm.module_shapes[module][0], generator=torch.Generator().manual_seed(3))
    adapters, _ = router.route(module, x)
    expected = torch.stack([lag.factors(module, int(j))[1] @ lag.factors(module, int(j))[0] @ t
                            for j, t in zip(adapters[:, 0], x.reshape(-1, x.shape[-1]))]).view(2, 5, -1)
    torch.testing.assert_close(router.delta(module, x), expected, atol=1e-5, rtol=1e-5)


def test_arrow_filter_restricts_spectr_to_the_top_k(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 8))
    module = next(iter(lag.modules))
    x = torch.randn(200, llm.module_shapes[module][0], generator=torch.Generator().manual_seed(4))
    arrow_top2 = LAGRouter(lag, k=2, variant="arrow").route(module, x)[0]  # the two the filter keeps
    chosen = LAGRouter(lag, k=2).route(module, x)[0][:, 0]
    assert torch.all((arrow_top2 == chosen[:, None]).any(-1))
    spectr = LAGRouter(lag, variant="spectr").route(module, x)[0][:, 0]
    assert (spectr != chosen).any()  # a real filter: SpectR alone picks outside the top-2 somewhere


def test_arrow_variant_weights_are_a_softmax_over_top_k(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 6))
    module = next(iter(lag.modules))
    x = torch.randn(10, llm.module_shapes[module][0], generator=torch.Generator().manual_seed(5))
    adapters, weights = LAGRouter(lag, k=3, variant="arrow", temperature=0.5).route(module, x)
    arrows = torch.stack([lag.factors(module, j)[0][0] for j in range(6)])  # [6, in]
    scores = (x @ arrows.T).abs()
    top, idx = scores.topk(3, dim=-1)
    assert torch.equal(adapters, idx)
    torch.testing.assert_close(weights, torch.softmax(top / 0.5, -1), atol=1e-5, rtol=1e-5)


def test_routing_is_independent_across_batch_rows(llm):
    router = LAGRouter(LAGLibrary.from_adapter_library(_prag_library(llm, 5)), k=2)
    ids = _ids(rows=3)
    together = llm.logits(ids, mixture=router)
    for i in range(3):
        torch.testing.assert_close(together[i: i + 1], llm.logits(ids[i: i + 1], mixture=router),
                                   atol=1e-5, rtol=1e-5)
    other = ids.clone()
    other[1:] = _ids(rows=2, seed=9)  # changing other rows leaves row 0's routing and output alone
    torch.testing.assert_close(llm.logits(other, mixture=router)[0], together[0], atol=1e-5, rtol=1e-5)


def test_stacked_rows_share_a_batch_and_none_rows_run_the_bare_model(llm):
    router = LAGRouter(LAGLibrary.from_adapter_library(_prag_library(llm, 4)), k=2)
    ids = _ids(rows=3)
    stacked = LAGRouter.stack([router, None, router])
    assert stacked.rows == 3
    out = llm.logits(ids, mixture=stacked)
    torch.testing.assert_close(out[1], llm.logits(ids[1:2])[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[[0, 2]], llm.logits(ids[[0, 2]], mixture=router), atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidInputError, match="same LAG library"):
        LAGRouter.stack([router, LAGRouter(router.library, k=3)])


def test_lag_sums_with_a_parametric_mixture(llm):
    library = _prag_library(llm, 4)
    router = LAGRouter(LAGLibrary.from_adapter_library(library), k=2)
    module = next(iter(library.bank.names))
    x = torch.randn(2, 3, llm.module_shapes[module][0])
    mix = library.mixture(["doc-2"])
    both = SumMixture([router, mix]).delta(module, x)
    torch.testing.assert_close(both, router.delta(module, x) + mix.delta(module, x), atol=1e-6, rtol=0)
    stacked = SumMixture.stack([SumMixture([router, mix]), SumMixture([router, mix])])
    assert stacked.rows == 2


def test_counting_reports_winning_adapters(llm):
    router = LAGRouter(LAGLibrary.from_adapter_library(_prag_library(llm, 4)), k=2)
    ids = _ids(rows=2, length=6)
    with router.counting() as wins:
        llm.logits(ids, mixture=router)
    layers = len(router.library.modules)
    assert sum(wins.values()) == 2 * 6 * layers  # one decision per token per target layer
    assert set(wins) <= set(router.library.names)


def test_save_load_round_trip(llm, tmp_path):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 4))
    lag.save(tmp_path / "lag")
    again = LAGLibrary.load(tmp_path / "lag", llm)
    assert again.names == lag.names and again.storage_bytes() == lag.storage_bytes()
    for module, f in lag.modules.items():
        g = again.modules[module]
        assert torch.equal(f.members, g.members) and torch.equal(f.A, g.A) and torch.equal(f.B, g.B)
    ids = _ids()
    torch.testing.assert_close(llm.logits(ids, mixture=LAGRouter(again, k=2)),
                               llm.logits(ids, mixture=LAGRouter(lag, k=2)), atol=0, rtol=0)


def test_load_refuses_another_model_and_altered_files(llm, tmp_path):
    from tiny import tiny_llm

    LAGLibrary.from_adapter_library(_prag_library(llm, 2)).save(tmp_path / "lag")
    with pytest.raises(IncompatibleModelError):
        LAGLibrary.load(tmp_path / "lag", tiny_llm(seed=1))
    with (tmp_path / "lag" / "factors.safetensors").open("r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(LibraryError, match="checksum"):
        LAGLibrary.load(tmp_path / "lag", llm)
    with pytest.raises(LibraryError, match="not a LAG library"):
        LAGLibrary.load(tmp_path / "nothing", llm)


def test_poly_bank_adapters_form_the_library(llm):
    bank = random_bank(llm, 3)
    cfg = LibraryConfig(kind="poly", rank=2, alpha=bank.alpha, m=3, target_modules=list(llm.target_modules),
                        base_model=llm.fingerprint())
    docs = [Document(id=f"p{i}", text=f"fact {i}") for i in range(5)]
    poly = AdapterLibrary(llm, bank, docs, cfg, routing_logits=torch.zeros(5, 3))
    lag = LAGLibrary.from_adapter_library(poly)
    assert lag.names == ["adapter-0", "adapter-1", "adapter-2"]


def test_bad_arguments_are_refused(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 2))
    with pytest.raises(InvalidInputError, match="variant"):
        LAGRouter(lag, variant="moe")
    with pytest.raises(InvalidInputError, match="k must be"):
        LAGRouter(lag, k=0)
    with pytest.raises(InvalidInputError, match="LAG router"):
        PolyPRAG(llm, None, mode="lag")


def test_pipeline_lag_mode_needs_no_retriever(llm):
    router = LAGRouter(LAGLibrary.from_adapter_library(_prag_library(llm, 3)), k=2)
    rag = PolyPRAG(llm, None, mode="lag", lag=router, max_new_tokens=3)
    answers = rag.answer_batch(["who built the lighthouse", "what is the velt"])
    assert len(answers) == 2 and all(a.mixture is router for a in answers)


# ---- peft folders -------------------------------------------------------------------------------
def _save_peft(llm, path, targets, rank, alpha, seed, **extra):
    """A real peft LoRA adapter on the tiny model with non-zero random weights, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    base.load_state_dict(llm.model.state_dict())
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                     lora_dropout=0.0, **extra)
    pm = get_peft_model(base, cfg)
    pm.save_pretrained(str(path))
    return pm.eval()


def test_peft_folders_with_different_ranks_and_targets(llm, tmp_path):
    pa = _save_peft(llm, tmp_path / "law", ["gate_proj", "up_proj"], rank=2, alpha=4, seed=1)
    pb = _save_peft(llm, tmp_path / "math", ["up_proj", "down_proj"], rank=4, alpha=16, seed=2)
    lag = LAGLibrary.from_peft([tmp_path / "law", tmp_path / "math"], llm)
    assert lag.names == ["law", "math"]
    gate = next(m for m in lag.modules if m.endswith("gate_proj"))
    down = next(m for m in lag.modules if m.endswith("down_proj"))
    up = next(m for m in lag.modules if m.endswith("up_proj"))
    assert lag.modules[gate].members.tolist() == [0] and lag.modules[down].members.tolist() == [1]
    assert lag.modules[up].ranks.tolist() == [2, 4]
    x = torch.randn(1, 4, llm.module_shapes[up][0])
    assert set(LAGRouter(lag, k=2).route(gate, x)[0].flatten().tolist()) == {0}  # only law touches gate
    ids = _ids()
    for name, pm in (("law", pa), ("math", pb)):  # each folder alone == peft's own LoRA model
        alone = LAGLibrary.from_peft([tmp_path / name], llm)
        with torch.no_grad():
            theirs = pm(input_ids=ids).logits
        torch.testing.assert_close(llm.logits(ids, mixture=LAGRouter(alone)), theirs, atol=1e-4, rtol=1e-4)


def test_peft_rslora_and_alpha_pattern_scales(llm, tmp_path):
    pm = _save_peft(llm, tmp_path / "rs", ["gate_proj", "down_proj"], rank=4, alpha=8, seed=3,
                    use_rslora=True, alpha_pattern={"down_proj": 2})
    ids = _ids()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    ours = llm.logits(ids, mixture=LAGRouter(LAGLibrary.from_peft([tmp_path / "rs"], llm)))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_arrow_variant_equals_peft_arrow(llm, tmp_path):
    """Rank-1 adapters: peft's power-iteration prototype is then exact, so both Arrows must agree."""
    from peft import ArrowConfig, create_arrow_model

    paths = []
    for i in range(4):
        _save_peft(llm, tmp_path / f"t{i}", ["gate_proj", "up_proj", "down_proj"], rank=1, alpha=2, seed=10 + i)
        paths.append(str(tmp_path / f"t{i}"))
    base = tiny_model()
    base.load_state_dict(llm.model.state_dict())
    peft_arrow = create_arrow_model(base, paths, ArrowConfig(top_k=2, router_temperature=1.0, rng_seed=0)).eval()
    ids = _ids()
    with torch.no_grad():
        theirs = peft_arrow(input_ids=ids).logits
    ours = llm.logits(ids, mixture=LAGRouter(LAGLibrary.from_peft(paths, llm), k=2, variant="arrow"))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_peft_folder_problems_are_refused(llm, tmp_path):
    _save_peft(llm, tmp_path / "attn", ["q_proj"], rank=2, alpha=4, seed=1)
    with pytest.raises(InvalidInputError, match="target_modules"):
        LAGLibrary.from_peft([tmp_path / "attn"], llm)
    with pytest.raises(LibraryError, match="adapter_config.json"):
        LAGLibrary.from_peft([tmp_path / "missing"], llm)
    _save_peft(llm, tmp_path / "ok", ["gate_proj"], rank=2, alpha=4, seed=1)
    (tmp_path / "ok" / "adapter_model.safetensors").rename(tmp_path / "ok" / "adapter_model.bin")
    with pytest.raises(LibraryError, match="pickle"):
        LAGLibrary.from_peft([tmp_path / "ok"], llm)
    _save_peft(llm, tmp_path / "dora", ["gate_proj"], rank=2, alpha=4, seed=1, use_dora=True)
    with pytest.raises(InvalidInputError, match="DoRA"):
        LAGLibrary.from_peft([tmp_path / "dora"], llm)
    cfg = json.loads((tmp_path / "attn" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"


def _slice_bank(bank, j):
    from polyprag import LoRABank

    return LoRABank(bank.shapes, 1, bank.rank, bank.alpha, A=[a[j: j + 1].clone() for a in bank.A],
                    B=[b[j: j + 1].clone() for b in bank.B])
