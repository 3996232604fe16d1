"""The cross-encoder trained on labelled catalog queries, so re-ranking helps instead of scrambling.

Offline the cross-encoder is the real MiniLM encoder with a seeded random head (``partial`` weights):
its scores are noise and re-ranking scrambles a good retrieval. Here the top ``layers`` transformer
blocks and the head (pooler + classifier) are trained, the blocks below stay frozen: their output is
computed once per pair and cached, so an epoch runs only the trained blocks. Training the head alone on
the frozen [CLS] state is not enough (measured: level with retrieval), because a sentence-embedding
encoder's [CLS] never compared a query with a passage; one trained block can attend across the pair.

Pairs come from the demo catalog's generator labels (same kind and colour: relevant; the material named
too: more relevant). Each training query's candidates are its relevant products, the hard negatives the
adapter's retrieval ranks highest over the training products (seed 003's mining from the index), and
same-kind look-alikes in other colours. Queries are held out by (kind, colour): no test query's
combination is seen in training, and test products are the catalog's test split.

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

from adapt.features import session
from demo.catalog import generate_queries
from vitrine import ranking
from vitrine.catalog import LabelledQuery, Product
from vitrine.contracts import RERANK_MAX_LENGTH, Tensor
from vitrine.tokenization import PairTokenizer

PASSAGE_WORDS = 32
"""Description words the gateway's re-ranker reads by default (``PipelineSettings.passage_words``)."""
CHECKPOINT = Path("checkpoints/cross_encoder")
TOKENIZER = Path("tokenizers/cross_encoder/tokenizer.json")


@dataclass(frozen=True)
class RerankSpec:
    """Flags of ``vitrine adapt train`` (``rerank_*``); the seed is the training seed."""

    rerank_layers: int = field(
        default=1, metadata={"help": "cross-encoder blocks trained with its head (0: head only)"}
    )
    rerank_mined: int = field(
        default=30, metadata={"help": "hard negatives per query from the adapter's retrieval"}
    )
    rerank_relevant: int = field(
        default=8, metadata={"help": "relevant products per training query (at most)"}
    )
    rerank_same_kind: int = field(
        default=8, metadata={"help": "same-kind products in other colours per query"}
    )
    rerank_epochs: int = field(default=3, metadata={"help": "passes over the re-ranking training queries"})
    rerank_lr: float = field(default=3e-4, metadata={"help": "cross-encoder AdamW learning rate"})
    rerank_depth: int = field(default=50, metadata={"help": "re-ranked pool per evaluation query"})


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


def _additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """The attention mask as BERT's eager attention adds it to the scores."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class Encoder:
    """The exported cross-encoder checkpoint in PyTorch, split where training starts.

    ``lower`` runs the embeddings and the frozen blocks (cached per pair during training); ``upper``
    runs the ``layers`` trained blocks and the head ``BertForSequenceClassification`` puts on the [CLS]
    state: the pooler (dense + tanh) and the classifier. The offline checkpoint's pooler was never
    trained for pairs (the MiniLM encoder comes from a sentence-embedding model), so it is trained too.
    """

    def __init__(self, artifacts: Path, layers: int = 1) -> None:
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(
            artifacts / CHECKPOINT, attn_implementation="eager"
        ).eval()
        self.tokenizer = PairTokenizer.from_file(artifacts / TOKENIZER, RERANK_MAX_LENGTH)
        blocks = self.model.bert.encoder.layer
        if not 0 <= layers <= len(blocks):
            raise ValueError(f"layers must be 0..{len(blocks)}, got {layers}")
        self.layers = layers
        self.split = len(blocks) - layers
        self.trained = torch.nn.ModuleDict(
            {
                "blocks": torch.nn.ModuleList(blocks[self.split :]),
                "pooler": self.model.bert.pooler,
                "classifier": self.model.classifier,
            }
        )
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.trained.parameters():
            p.requires_grad_(True)

    @torch.no_grad()
    def lower(self, query: str, passages: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the frozen blocks, and the additive attention mask."""
        b = self.tokenizer.encode(query, passages)
        bert = self.model.bert
        h = bert.embeddings(
            input_ids=torch.from_numpy(b.input_ids), token_type_ids=torch.from_numpy(b.token_type_ids)
        )
        mask = _additive_mask(torch.from_numpy(b.attention_mask))
        for block in bert.encoder.layer[: self.split]:
            h = block(h, mask)
        return h, mask

    def upper(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the pairs from the frozen blocks' output."""
        for block in self.model.bert.encoder.layer[self.split :]:
            h = block(h, mask)
        pooler = self.model.bert.pooler
        return self.model.classifier(pooler.activation(pooler.dense(h[:, 0]))).squeeze(-1)

    def trained_state(self) -> dict[str, Any]:
        return {"layers": self.layers, "state": self.trained.state_dict()}

    def load_trained(self, saved: dict[str, Any]) -> None:
        if int(saved["layers"]) != self.layers:
            raise ValueError(f"saved model trains {saved['layers']} blocks, this encoder {self.layers}")
        self.trained.load_state_dict(saved["state"])

    @classmethod
    def from_saved(cls, artifacts: Path, path: Path) -> Encoder:
        saved = torch.load(path, weights_only=True)
        enc = cls(artifacts, int(saved["layers"]))
        enc.load_trained(saved)
        return enc


def candidates(
    q: LabelledQuery,
    products: Sequence[Product],
    mined: Sequence[Product],
    spec: RerankSpec,
    rng: random.Random,
) -> list[Product]:
    """A training query's list: relevant products, the retrieval's hard negatives, then same-kind
    look-alikes in other colours (the mistakes a colour-blind ranker makes)."""
    rel = [p for p in products if p.id in q.relevant]
    rng.shuffle(rel)
    out = rel[: spec.rerank_relevant]
    seen = {p.id for p in out}
    hard = [p for p in mined if p.id not in q.relevant][: spec.rerank_mined]
    kind = {p.category[-1] for p in rel}
    alike = [p for p in products if p.id not in q.relevant and p.category[-1] in kind]
    rng.shuffle(alike)
    for p in [*hard, *alike[: spec.rerank_same_kind]]:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


def train(
    enc: Encoder,
    queries: Sequence[LabelledQuery],
    products: Sequence[Product],
    mined: Sequence[Sequence[Product]],
    spec: RerankSpec,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Listwise softmax over each query's candidates toward its graded relevance (2^grade - 1);
    ``mined[i]`` is query i's retrieval over ``products``, best first."""
    if len(mined) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(mined)} mined lists")
    t0 = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cached = []
    for q, retrieved in tqdm(
        list(zip(queries, mined, strict=True)), desc="rerank features", unit="query", disable=not progress
    ):
        cands = candidates(q, products, retrieved, spec, rng)
        grades = torch.tensor([q.relevant.get(p.id, 0.0) for p in cands])
        cached.append((*enc.lower(q.text, [p.passage(PASSAGE_WORDS) for p in cands]), grades))
    t_features = time.perf_counter() - t0
    opt = torch.optim.AdamW(enc.trained.parameters(), lr=spec.rerank_lr, weight_decay=0.01)
    losses = []
    enc.model.train()
    for _ in tqdm(range(spec.rerank_epochs), desc="rerank training", unit="epoch", disable=not progress):
        order = list(range(len(cached)))
        rng.shuffle(order)
        total = 0.0
        for i in order:
            h, mask, grades = cached[i]
            gain = 2.0**grades - 1.0
            loss = -((gain / gain.sum()) * torch.log_softmax(enc.upper(h, mask), dim=0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order)))
    enc.model.eval()
    return {
        "queries": len(queries),
        "pairs": sum(len(g) for *_, g in cached),
        "losses": [round(x, 4) for x in losses],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "feature_seconds": round(t_features, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "spec": asdict(spec),
        "seed": seed,
    }


@torch.no_grad()
def scores(enc: Encoder, query: str, passages: Sequence[str]) -> np.ndarray:
    return enc.upper(*enc.lower(query, passages)).numpy()


def snapshot(enc: Encoder) -> dict[str, Any]:
    """A copy of the trainable part's current weights (``trained_state`` shares the live tensors)."""
    return {
        "layers": enc.layers,
        "state": {k: v.detach().clone() for k, v in enc.trained.state_dict().items()},
    }


@torch.no_grad()
def paired_scores(
    enc: Encoder, baseline: dict[str, Any], query: str, passages: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs' scores by ``baseline`` (a ``snapshot`` of the same encoder, e.g. before training) and
    by the encoder as it is now. The frozen blocks are shared, so their output is computed once: the
    comparison costs one pass through them plus the top blocks twice."""
    h, mask = enc.lower(query, passages)
    now = enc.upper(h, mask).numpy()
    current = snapshot(enc)
    enc.load_trained(baseline)
    try:
        before = enc.upper(h, mask).numpy()
    finally:
        enc.load_trained(current)
    return before, now


def ranking_metrics(
    orders: Sequence[Sequence[str]], queries: Sequence[LabelledQuery]
) -> dict[str, np.ndarray]:
    return {
        "NDCG@10": np.asarray(
            [ranking.ndcg_at(o, q.relevant, 10) for o, q in zip(orders, queries, strict=True)]
        ),
        "MRR": np.asarray(
            [ranking.reciprocal_rank(o, q.relevant) for o, q in zip(orders, queries, strict=True)]
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


def int8_agreement(
    enc: Encoder, out: Path, pools: Sequence[tuple[str, Sequence[str]]]
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Export the trained model (fp32, checked against PyTorch) and a dynamic int8 graph; compare
    their top-10 on the evaluation pools: set overlap and the share of identical top-10 orders.
    Returns the figures and the int8 scores of each pool (so its ranking quality can be measured too)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    export_onnx(enc, fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    s32, s8 = session(fp32), session(int8)
    overlap, same, max_diff, int8_scores = [], [], 0.0, []
    for query, passages in pools:
        a, b = onnx_scores(s32, enc, query, passages), onnx_scores(s8, enc, query, passages)
        int8_scores.append(b)
        max_diff = max(max_diff, float(np.abs(a - scores(enc, query, passages)).max()))
        ta, tb = np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
        overlap.append(len(set(ta) & set(tb)) / len(ta))
        same.append(float(np.array_equal(ta, tb)))
    figures = {"fp32_vs_pytorch_max_abs": max_diff, "top10_overlap": float(np.mean(overlap)),
               "top10_identical_order": float(np.mean(same)), "pools": len(pools)}  # fmt: skip
    return figures, int8_scores
