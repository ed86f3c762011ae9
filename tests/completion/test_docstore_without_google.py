"""The embedded completion store (SQLiteDocumentClient) and CompletionTracker on it
need no cloud client: with google-cloud-* unimportable they count, refuse stale
writes and trigger exactly as with Google's client installed."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.without import run_without

_TRACKER_RUN = """
import json, sys
from processor_guard.completion.docstore import SQLiteDocumentClient
from processor_guard.completion.tracker import CompletionTracker
from processor_guard import _docapi

client = SQLiteDocumentClient(sys.argv[1])
published = []
tracker = CompletionTracker(
    client, "phase3", ["a", "b"], lambda day, state: published.append(day) or "m-1"
)
tracker.record("2026-02-03", "a", execution_id="e1", record_count=3)
tracker.record("2026-02-03", "a", execution_id="e1", record_count=3)
state = tracker.record("2026-02-03", "b", execution_id="e2", record_count=4)
ref = client.collection("c").document("d")
ref.create({"x": 1, "odd.name": _docapi.server_timestamp()})
errors = []
for attempt in (lambda: ref.create({"x": 2}),
                lambda: client.collection("c").document("nope").update({"x": 1})):
    try:
        attempt()
    except Exception as exc:
        errors.append(type(exc).__name__)
ref.update({_docapi.quote_field("odd.name"): _docapi.delete_field()})
print(json.dumps({
    "count": state.count, "triggered": state.triggered, "published": published,
    "errors": errors, "doc": sorted(ref.get().to_dict()),
    "google": sorted(m for m in sys.modules if m.startswith("google")),
}))
"""


def test_tracker_on_the_local_docstore_without_google(tmp_path: Path) -> None:
    proc = run_without(["google"], _TRACKER_RUN, str(tmp_path / "completion.db"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["count"] == 2
    assert out["triggered"] is True
    assert out["published"] == ["2026-02-03"]
    assert out["errors"] == ["LocalAlreadyExists", "LocalNotFound"]
    assert out["doc"] == ["x"]
    assert out["google"] == []
