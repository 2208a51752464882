"""Context distillation: the adapter learns the in-context teacher's answer distributions."""
from __future__ import annotations

import torch

from polyprag import Document, PRAGEncoder
from polyprag.encoding.distill import DistillAugmenter, profile_questions, teacher_distributions
from polyprag.encoding.training import collate, row_losses, tokenize


def test_profile_questions_name_the_subject(docs):
    qs = profile_questions(docs[0])
    assert qs and all("zorvania" in q for q in qs)


def test_teacher_targets_cover_every_answer_token_and_sum_to_one(llm, docs, tmp_path):
    from polyprag.encoding.augment import TrainingExample

    taught = DistillAugmenter(llm, top_k=4, cache=tmp_path, max_new_tokens=4).teach(docs[:2])
    assert any(taught)
    for rows in taught:
        for q, a, ids, probs in rows:
            row = tokenize(llm, TrainingExample(target=a, question=q, teacher=(ids, probs)), 256)
            assert len(ids) == len(probs) == sum(1 for x in row.labels if x != -100)
            assert all(abs(sum(p) - 1) < 1e-3 for p in probs)


def test_soft_loss_is_the_teacher_cross_entropy(llm, docs):
    """With the teacher's own distribution as the target, the soft loss of the base model equals the teacher's
    entropy over its top k on the same prompt (student = teacher when the passage is in both prompts)."""
    from polyprag.encoding.augment import TrainingExample

    q, a = "what is zorvania ?", "quellport"
    prompt = llm.question_prompt(q, [docs[0].text])
    (ids, probs), = teacher_distributions(llm, [prompt], [a], top_k=8)
    ex = TrainingExample(target=a, question=q, context=docs[0].text, teacher=(ids, probs))
    row = tokenize(llm, ex, 256)
    loss = row_losses(llm, collate([row], llm.tokenizer.pad_token_id, llm.device), None)[0]
    logp = torch.log_softmax(llm.logits(torch.tensor([row.ids]))[0].float(), -1)
    want = -sum(p * logp[row.soft_start - 1 + t, i] for t, (ti, tp) in enumerate(zip(ids, probs))
                for i, p in zip(ti, tp)) / len(ids)
    assert abs(float(loss) - float(want)) < 1e-3
    hard = row_losses(llm, collate([tokenize(llm, TrainingExample(target=a, question=q, context=docs[0].text), 256)],
                                   llm.tokenizer.pad_token_id, llm.device), None)[0]
    assert abs(float(hard) - float(loss)) > 1e-4  # the soft target is not the hard label's loss


def test_distilled_adapter_moves_the_question_answer_toward_the_teacher(llm, docs, tmp_path):
    """Trained by distillation, the adapter on the bare question is closer to the teacher's distributions (its
    soft cross-entropy to them falls) than the base model is."""
    # top 2: a rank-2 LoRA of the tiny random model cannot fit the near-uniform top 8 of a random teacher
    aug = DistillAugmenter(llm, texts=("distill",), top_k=2, cache=tmp_path, max_new_tokens=4)
    lib = PRAGEncoder(llm, augmenter=aug, epochs=20, lr=2e-2, progress=False).fit(docs[:2])
    (q, a, ids, probs), *_ = aug.teach(docs[:1])[0]
    from polyprag.encoding.augment import TrainingExample

    row = tokenize(llm, TrainingExample(target=a, question=q, teacher=(ids, probs)), 256)
    batch = collate([row], llm.tokenizer.pad_token_id, llm.device)
    before = float(row_losses(llm, batch, None)[0])
    after = float(row_losses(llm, batch, lib.mixture([docs[0].id]))[0])
    assert after < before - 0.1, (before, after)
    assert aug.stats.cache_hits >= 1  # the second call read the teacher from the cache


def test_distill_refuses_generated_texts(llm):
    import pytest
    from polyprag.errors import PolyPRAGError

    with pytest.raises(PolyPRAGError, match="distill"):
        DistillAugmenter(llm, texts=("passage",))
    with pytest.raises(PolyPRAGError, match="generated"):
        DistillAugmenter(llm, texts=("qa", "distill"))


def test_poly_prag_bank_learns_the_teacher_too(llm, docs, tmp_path):
    """The same distillation texts train a Poly-PRAG bank and its routing (one training loss for both methods)."""
    from polyprag import PolyPRAGEncoder
    from polyprag.encoding.augment import TrainingExample

    aug = DistillAugmenter(llm, texts=("distill",), top_k=2, cache=tmp_path, max_new_tokens=4)
    lib = PolyPRAGEncoder(llm, augmenter=aug, num_adapters=2, epochs=20, lr=2e-2, progress=False).fit(docs[:2])
    (q, a, ids, probs), *_ = aug.teach(docs[:1])[0]
    row = tokenize(llm, TrainingExample(target=a, question=q, teacher=(ids, probs)), 256)
    batch = collate([row], llm.tokenizer.pad_token_id, llm.device)
    before = float(row_losses(llm, batch, None)[0])
    after = float(row_losses(llm, batch, lib.mixture([docs[0].id]))[0])
    assert after < before - 0.1, (before, after)
