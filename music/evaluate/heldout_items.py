"""The held-out test items as the `heldout` stage writes them (music.stages.heldout) and the evaluate stage reads them.

outputs/heldout/ holds `d_eval` and `quality_eval` (pair datasets, music.store), `swap_eval.jsonl` (one record
per swapped item: item_id, conversation_id, distance, donor_id, cluster, source, intact, swapped) and
`heldout_report.json` (counts, sources, the settings that made them). Held-out MUSIC pairs (`music_eval`) are
not here: they are the method's own output and stay in the contrast stage's outputs/pairs/.
"""

from __future__ import annotations

from pathlib import Path

from music.errors import DataError
from music.evaluate.items import Item
from music.files import read_jsonl
from music.schema import validate_conversation

PAIR_SETS = ("d_eval", "quality_eval")  # pair datasets (music.store) in outputs/heldout/
SWAP_FILE = "swap_eval.jsonl"
REPORT_FILE = "heldout_report.json"
SWAP_FIELDS = ("item_id", "conversation_id", "distance", "donor_id", "cluster", "source", "intact", "swapped")
# test per record: "swap" (a reply from another chat) or "swap_same" (from another turn of the same chat);
# a record without it (written before the same-chat variant) is a "swap" item
SWAP_TEST_FIELD = "test"


def swap_record(pair, source: str = "sharegpt") -> dict:
    """One swapped item (a music.evaluate.swap.SwappedPair) as a record; every swap of a conversation (both donor
    kinds) shares its cluster."""
    return {
        "test": pair.test,
        "item_id": pair.item_id,
        "conversation_id": str(pair.conversation_id),
        "distance": int(pair.distance),
        "donor_id": str(pair.donor_id),
        "cluster": str(pair.conversation_id),
        "source": source,
        "intact": pair.intact,
        "swapped": pair.swapped,
    }


def read_swap_items(path: str | Path) -> list[Item]:
    """Items of tests `swap` / `swap_same` from swap_eval.jsonl (chosen = intact, rejected = swapped); errors name
    file, line, field."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "-", None, "file does not exist (run the heldout stage first: `dvc repro heldout`)")
    if path.stat().st_size == 0:
        return []
    out = []
    for lineno, rec in read_jsonl(path):
        where = f"line {lineno}"
        if not isinstance(rec, dict):
            raise DataError(path, where, None, "not a JSON object")
        for key in SWAP_FIELDS:
            if key not in rec:
                raise DataError(path, where, key, "missing field")
        intact = validate_conversation(rec["intact"], source=str(path), record=where)
        swapped = validate_conversation(rec["swapped"], source=str(path), record=where)
        out.append(
            Item(
                str(rec.get(SWAP_TEST_FIELD, "swap")),
                str(rec["item_id"]),
                int(rec["distance"]),
                intact,
                swapped,
                str(rec["source"]),
                str(rec["cluster"]),
            )
        )
    return out
