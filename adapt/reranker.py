"""The cross-encoder's classification head trained on labelled catalog queries, so re-ranking helps.

Offline the cross-encoder is the real MiniLM encoder with a seeded random head (``partial`` weights):
its scores are noise and re-ranking scrambles a good retrieval. Here the encoder stays frozen and only
the head learns, from (query, product) pairs the demo catalog's generator labels (same kind and colour:
relevant; the material named too: more relevant). Pairs are tokenized by the served tokenizer and the
encoder's pooled output is cached once, so training is seconds. Queries are held out by (kind, colour):
no test query's combination is seen in training, and test products are the catalog's test split.

The trained model is exported to ONNX (validated against PyTorch) and dynamically quantised; the int8
graph's top-10 agreement with fp32 is measured on the evaluation pools (the speed issue needs it).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adapt import metrics
from adapt.features import session
from demo.catalog import generate_queries
from vitrine.catalog import LabelledQuery, Product
from vitrine.contracts import RERANK_MAX_LENGTH, Tensor
from vitrine.tokenization import PairTokenizer

PASSAGE_WORDS = 32
"""Description words the gateway's re-ranker reads by default (``PipelineSettings.passage_words``)."""
CHECKPOINT = Path("checkpoints/cross_encoder")
TOKENIZER = Path("tokenizers/cross_encoder/tokenizer.json")


@dataclass(frozen=True)
class RerankSpec:
    candidates: int = field(default=40, metadata={"help": "training candidates per query"})
    epochs: int = field(default=60, metadata={"help": "passes over the training queries"})
    lr: float = field(default=5e-3, metadata={"help": "head learning rate"})
    depth: int = field(default=50, metadata={"help": "re-ranked pool per evaluation query"})
    seed: int = 0


def _key(q: LabelledQuery, by_id: dict[str, Product]) -> tuple[str, str]:
    p = by_id[next(iter(q.relevant))]
    return p.category[-1], p.attributes.get("color", "")


def labelled_queries(
    train: Sequence[Product], test: Sequence[Product], seed: int
) -> tuple[list[LabelledQuery], list[LabelledQuery]]:
    """Training queries over training products and test queries over test products, their (kind,
    colour) combinations disjoint: half the combinations are kept for testing."""
    by_id = {p.id: p for p in (*train, *test)}
    keys = sorted({(p.category[-1], p.attributes.get("color", "")) for p in (*train, *test)})
    random.Random(seed + 31).shuffle(keys)
    held = set(keys[: len(keys) // 2])
    tr: dict[str, LabelledQuery] = {}
    for s in range(4):  # several materials per combination
        for q in generate_queries(train, 200, seed + s):
            if _key(q, by_id) not in held:
                tr.setdefault(q.text, q)
    te = [q for q in generate_queries(test, 200, seed + 100) if _key(q, by_id) in held]
    return list(tr.values()), te


class Encoder:
    """The exported cross-encoder checkpoint in PyTorch: the transformer frozen, its head trainable.

    The head is what ``BertForSequenceClassification`` puts on the [CLS] state: the pooler (dense +
    tanh) and the classifier. The offline checkpoint's pooler was never trained for pairs (the MiniLM
    encoder comes from a sentence-embedding model), so both are trained; the encoder's [CLS] state is
    computed once per pair and cached.
    """

    def __init__(self, artifacts: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(
            artifacts / CHECKPOINT, attn_implementation="eager"
        ).eval()
        self.tokenizer = PairTokenizer.from_file(artifacts / TOKENIZER, RERANK_MAX_LENGTH)
        self.head = torch.nn.ModuleDict(
            {"pooler": self.model.bert.pooler, "classifier": self.model.classifier}
        )

    @torch.no_grad()
    def pooled(self, query: str, passages: Sequence[str]) -> torch.Tensor:
        """[CLS] states of the pairs (the head's input)."""
        b = self.tokenizer.encode(query, passages)
        out = self.model.bert(
            input_ids=torch.from_numpy(b.input_ids),
            attention_mask=torch.from_numpy(b.attention_mask),
            token_type_ids=torch.from_numpy(b.token_type_ids),
        )
        return out.last_hidden_state[:, 0]

    def logits(self, cls: torch.Tensor) -> torch.Tensor:
        pooler = self.model.bert.pooler
        return self.model.classifier(pooler.activation(pooler.dense(cls))).squeeze(-1)


def _candidates(q: LabelledQuery, products: Sequence[Product], n: int, rng: random.Random) -> list[Product]:
    """Relevant products first, then same-kind look-alikes (hard), then random others."""
    rel = [p for p in products if p.id in q.relevant]
    kind = {p.category[-1] for p in rel}
    hard = [p for p in products if p.id not in q.relevant and p.category[-1] in kind]
    rng.shuffle(hard)
    rest = [p for p in products if p.id not in q.relevant and p.category[-1] not in kind]
    rng.shuffle(rest)
    return (rel[: n // 4] + hard + rest)[:n]


def train_head(
    enc: Encoder, queries: Sequence[LabelledQuery], products: Sequence[Product], spec: RerankSpec,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Listwise softmax over each query's candidates toward its graded relevance; the head only."""
    t0 = time.perf_counter()
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    cached = []
    for q in tqdm(queries, desc="rerank features", disable=not progress):
        cands = _candidates(q, products, spec.candidates, rng)
        grades = torch.tensor([q.relevant.get(p.id, 0.0) for p in cands])
        cached.append((enc.pooled(q.text, [p.passage(PASSAGE_WORDS) for p in cands]), grades))
    opt = torch.optim.Adam(enc.head.parameters(), lr=spec.lr)
    losses = []
    for _ in range(spec.epochs):
        order = list(range(len(cached)))
        rng.shuffle(order)
        total = 0.0
        for i in order:
            pooled, grades = cached[i]
            target = (2.0**grades - 1.0) / (2.0**grades - 1.0).sum()
            logits = enc.logits(pooled)
            loss = -(target * torch.log_softmax(logits, dim=0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order)))
    enc.model.eval()
    return {
        "queries": len(queries),
        "pairs": sum(len(g) for _, g in cached),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "seconds": round(time.perf_counter() - t0, 1),
        "spec": asdict(spec),
    }


@torch.no_grad()
def scores(enc: Encoder, query: str, passages: Sequence[str]) -> np.ndarray:
    return enc.logits(enc.pooled(query, passages)).numpy()


def ranking_metrics(
    orders: Sequence[Sequence[str]], queries: Sequence[LabelledQuery]
) -> dict[str, np.ndarray]:
    return {
        "NDCG@10": np.asarray([metrics.ndcg_at(o, q.relevant) for o, q in zip(orders, queries, strict=True)]),
        "MRR": np.asarray(
            [metrics.reciprocal_rank(o, q.relevant) for o, q in zip(orders, queries, strict=True)]
        ),
    }


class _Tower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def export_onnx(enc: Encoder, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    b = enc.tokenizer.encode("red boots", ["a pair of boots", "a bag"])
    names = [Tensor.INPUT_IDS.value, Tensor.ATTENTION_MASK.value, Tensor.TOKEN_TYPE_IDS.value]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {Tensor.LOGITS.value: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Tower(enc.model).eval(),
            tuple(torch.from_numpy(x) for x in (b.input_ids, b.attention_mask, b.token_type_ids)),
            str(path), input_names=names, output_names=[Tensor.LOGITS.value], dynamic_axes=axes,
            opset_version=17, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def onnx_scores(sess: Any, enc: Encoder, query: str, passages: Sequence[str]) -> np.ndarray:
    b = enc.tokenizer.encode(query, passages)
    feeds = {Tensor.INPUT_IDS.value: b.input_ids, Tensor.ATTENTION_MASK.value: b.attention_mask,
             Tensor.TOKEN_TYPE_IDS.value: b.token_type_ids}  # fmt: skip
    return np.asarray(sess.run(None, feeds)[0]).reshape(-1)


def int8_agreement(enc: Encoder, out: Path, pools: Sequence[tuple[str, Sequence[str]]]) -> dict[str, float]:
    """Export the trained model (fp32, checked against PyTorch) and a dynamic int8 graph; compare
    their top-10 on the evaluation pools: set overlap and the share of identical top-10 orders."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    export_onnx(enc, fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    s32, s8 = session(fp32), session(int8)
    overlap, same, max_diff = [], [], 0.0
    for query, passages in pools:
        a, b = onnx_scores(s32, enc, query, passages), onnx_scores(s8, enc, query, passages)
        max_diff = max(max_diff, float(np.abs(a - scores(enc, query, passages)).max()))
        ta, tb = np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
        overlap.append(len(set(ta) & set(tb)) / len(ta))
        same.append(float(np.array_equal(ta, tb)))
    return {"fp32_vs_pytorch_max_abs": max_diff, "top10_overlap": float(np.mean(overlap)),
            "top10_identical_order": float(np.mean(same)), "pools": len(pools)}  # fmt: skip
