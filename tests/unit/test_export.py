"""`switchyard export`: ledger records (written by the ledger's own writer) to training CSV."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine

from routing.training import cli
from routing.training.train import read_router_csv
from tenancy.db import connect, migrate
from tenancy.export import (
    LabelRecord,
    cascade_confidences,
    combine,
    export_csv,
    labelled_rows,
    parse_since,
    pools_in_ledger,
)
from tenancy.ledger import LedgerEntry, LedgerWriter, add_feedback

T0 = 1_800_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    return engine


_ids = iter(range(10**9))


def served(
    prompt: str | None,
    pool: str = "small",
    *,
    at: float = T0,
    tenant: str = "acme",
    strategy: str = "route",
    tried: str | None = None,
    escalated: int = 0,
    confidence: float | None = None,
    outcome: str = "ok",
    confidence_on: str | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        id=f"chatcmpl-{next(_ids)}", created_at=at, endpoint="chat", model_asked="auto",
        strategy=strategy, outcome=outcome, latency_s=0.1, tenant=tenant,
        pools_tried=tried if tried is not None else pool, pool=pool, escalated=escalated,
        confidence=confidence, prompt=prompt, confidence_on=confidence_on,
    )  # fmt: skip


def write(engine: Engine, *entries: LedgerEntry) -> list[str]:
    writer = LedgerWriter(engine)
    for entry in entries:
        writer.record(entry)
    assert writer.flush() == len(entries)
    return [e.id for e in entries]


def export(engine: Engine, **kw: object) -> list[dict[str, str]]:
    out = io.StringIO()
    export_csv(engine, out, **kw)  # type: ignore[arg-type]
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_feedback_labels_the_pool_that_served_and_unknown_cells_stay_empty(
    engine: Engine,
) -> None:
    good, bad, none = write(
        engine, served("easy", "small"), served("hard", "large"), served("quiet", "small")
    )
    add_feedback(engine, good, "acme", 0.9)
    add_feedback(engine, bad, "acme", 0.2)
    rows = export(engine)
    assert [(r["prompt"], r["large"], r["small"]) for r in rows] == [
        ("easy", "", "1"),
        ("hard", "0", ""),
    ]  # "quiet" has no label at all: left out
    assert [r["source"] for r in rows] == ["ledger", "ledger"]
    assert none not in {r["prompt"] for r in rows}


def test_the_correctness_threshold_is_configurable(engine: Engine) -> None:
    (rid,) = write(engine, served("so-so", "small"))
    add_feedback(engine, rid, "acme", 0.6)
    assert export(engine)[0]["small"] == "1"
    assert export(engine, correct_at=0.7)[0]["small"] == "0"


def test_a_cascade_that_escalated_after_judging_says_the_cheap_pool_was_wrong(
    engine: Engine,
) -> None:
    _, failed, _, _ = write(
        engine,
        served("judged", "large", strategy="cascade", tried="small,large", escalated=1,
               confidence=-1.4),
        served("failed", "large", strategy="cascade", tried="small,large", escalated=1),
        served("confident", "small", strategy="cascade", tried="small", confidence=-0.1),
        served("raced", "large", strategy="speculative", tried="small,large", escalated=1,
               confidence=-1.0),
    )  # fmt: skip
    add_feedback(engine, failed, "acme", 1.0)
    rows = {r["prompt"]: (r["small"], r["large"]) for r in export(engine)}
    # The judged one: small 0 from the verdict, large unknown (no feedback on its answer).
    # The one whose cheap pool failed: no verdict on small, large right from feedback.
    # A confident cascade and a speculative race are no labels by themselves.
    assert rows == {"judged": ("0", ""), "failed": ("", "1")}


def test_escalation_and_feedback_on_the_strong_answer_give_both_labels(engine: Engine) -> None:
    (rid,) = write(
        engine,
        served("both", "large", strategy="cascade", tried="small,large", escalated=1,
               confidence=-2.0),
    )  # fmt: skip
    add_feedback(engine, rid, "acme", 1.0)
    assert [(r["small"], r["large"]) for r in export(engine)] == [("0", "1")]


def test_records_of_one_prompt_become_one_row_by_majority_ties_to_the_latest(
    engine: Engine,
) -> None:
    ids = write(
        engine,
        served("same", "small", at=T0 + 1),
        served("same", "small", at=T0 + 2),
        served("same", "small", at=T0 + 3),
        served("tie", "small", at=T0 + 1),
        served("tie", "small", at=T0 + 2),
    )
    for rid, score in zip(ids, [0.0, 1.0, 1.0, 1.0, 0.0], strict=True):
        add_feedback(engine, rid, "acme", score)
    rows = {r["prompt"]: (r["small"], r["records"]) for r in export(engine)}
    assert rows == {"same": ("1", "3"), "tie": ("0", "2")}  # 2 of 3 right; tie: latest is 0


def test_the_latest_feedback_on_a_response_is_its_verdict(engine: Engine) -> None:
    (rid,) = write(engine, served("changed my mind", "small"))
    add_feedback(engine, rid, "acme", 1.0)
    add_feedback(engine, rid, "acme", 0.0)
    assert export(engine)[0]["small"] == "0"


def test_only_stored_prompts_of_answered_requests_matching_the_filters(engine: Engine) -> None:
    ids = write(
        engine,
        served(None, "small"),  # tenant did not opt in: no text
        served("failed", "small", outcome="error"),
        served("old", "small", at=T0 - 86400 * 10),
        served("theirs", "small", tenant="other"),
        served("mine", "small"),
    )
    for rid in ids:
        add_feedback(engine, rid, "acme", 1.0)
    assert [r["prompt"] for r in export(engine)] == ["mine", "old", "theirs"]
    assert [r["prompt"] for r in export(engine, since=T0 - 86400)] == ["mine", "theirs"]
    assert [r["prompt"] for r in export(engine, tenants=["acme"])] == ["mine", "old"]
    assert [r["prompt"] for r in export(engine, tenants=["other", "acme"], since=T0)] == [
        "mine",
        "theirs",
    ]


def test_pool_columns_come_from_the_ledger_or_are_given(engine: Engine) -> None:
    ids = write(
        engine,
        served("a", "code"),
        served("b", "large", strategy="cascade", tried="small,large", escalated=1,
               confidence=-3.0),
    )  # fmt: skip
    add_feedback(engine, ids[0], "acme", 1.0)
    assert pools_in_ledger(engine, None, ()) == ["code", "large", "small"]
    out = io.StringIO()
    export_csv(engine, out, pools=["small", "code"])
    lines = out.getvalue().splitlines()
    assert lines == ["prompt,small,code,records,source", "a,,1,1,ledger", "b,0,,1,ledger"]


def test_rows_with_labels_only_for_pools_not_asked_for_are_left_out(engine: Engine) -> None:
    (rid,) = write(engine, served("code only", "code"))
    add_feedback(engine, rid, "acme", 1.0)
    out = io.StringIO()
    stats = export_csv(engine, out, pools=["small", "large"])
    assert out.getvalue().splitlines() == ["prompt,small,large,records,source"]
    assert (stats.rows, stats.unlabelled, stats.records) == (0, 1, 1)


def test_complete_keeps_only_rows_labelled_for_every_pool(engine: Engine, tmp_path: Path) -> None:
    ids = write(
        engine,
        served("both", "large", strategy="cascade", tried="small,large", escalated=1,
               confidence=-2.0),
        served("one", "small"),
    )  # fmt: skip
    for rid in ids:
        add_feedback(engine, rid, "acme", 1.0)
    path = tmp_path / "complete.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        stats = export_csv(engine, f, pools=["small", "large"], complete=True)
    data = read_router_csv(path)
    assert data.prompts == ("both",)
    assert (data.correct("small").tolist(), data.correct("large").tolist()) == ([False], [True])
    assert (stats.rows, stats.incomplete, stats.labels) == (
        1,
        1,
        {"small": [1, 0], "large": [0, 1]},
    )


def test_prompts_with_commas_quotes_and_newlines_survive_the_trainers_reader(
    engine: Engine, tmp_path: Path
) -> None:
    text = 'Say "hi",\nthen list: a, b'
    ids = write(
        engine,
        served(text, "large"),
        served(text, "small", strategy="cascade", tried="small", confidence=-0.2),
    )
    add_feedback(engine, ids[0], "acme", 1.0)
    add_feedback(engine, ids[1], "acme", 0.0)
    path = tmp_path / "out.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        export_csv(engine, f)
    data = read_router_csv(path)
    assert data.prompts == (text,)
    assert data.correct("small").tolist() == [False]
    assert data.correct("large").tolist() == [True]


def test_labels_are_combined_from_records_in_prompt_order_without_a_database() -> None:
    def rec(prompt: str, at: float, pool: str, score: float | None) -> LabelRecord:
        return LabelRecord(prompt, at, "route", pool, pool, 0, None, score)

    rows = list(
        labelled_rows(
            [rec("a", 1, "small", 1.0), rec("a", 2, "large", 0.0), rec("b", 1, "small", None)]
        )
    )
    assert [(r.prompt, r.labels, r.records) for r in rows] == [("a", {"small": 1, "large": 0}, 2)]
    assert combine([(1.0, 1), (2.0, 0)]) == 0 and combine([(2.0, 1), (1.0, 0)]) == 1
    assert combine([(1.0, 0), (2.0, 1), (3.0, 0)]) == 0


def test_the_export_streams_memory_stays_flat_as_the_ledger_grows(engine: Engine) -> None:
    n = 20_000
    padding = "x" * 1000  # 20 MB of prompt text in all
    writer = LedgerWriter(engine)
    for i in range(n):
        writer.record(
            served(f"{i:06d} {padding}", "large", strategy="cascade", tried="small,large",
                   escalated=1, confidence=-1.0)
        )  # fmt: skip
    assert writer.flush() == n
    rows = 0

    class Counter(io.TextIOBase):
        def write(self, text: str) -> int:
            nonlocal rows
            rows += text.count("\n")
            return len(text)

    tracemalloc.start()
    stats = export_csv(engine, Counter(), pools=["small", "large"])  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (stats.rows, rows) == (n, n + 1)
    assert peak < 8 * 1024 * 1024  # far below the 20 MB of prompts: rows are not all held


def test_since_accepts_durations_dates_and_unix_seconds() -> None:
    assert parse_since("7d", now=T0) == T0 - 7 * 86400
    assert parse_since("1.5h", now=T0) == T0 - 5400
    assert parse_since("2027-01-15") == parse_since("2027-01-15T00:00:00+00:00")
    assert parse_since("2027-01-15T01:00:00+01:00") == parse_since("2027-01-15")
    assert parse_since("1800000000") == T0
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday")


def test_the_command_writes_the_file_and_says_what_it_exported(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    ids = write(engine, served("recent", "small", at=now), served("ancient", "small", at=now - 9e6))
    for rid in ids:
        add_feedback(engine, rid, "acme", 1.0)
    out = tmp_path / "train.csv"
    url = str(engine.url)
    assert cli.main(["export", "--database-url", url, "--since", "30d", "-o", str(out)]) == 0
    assert out.read_text().splitlines() == ["prompt,small,records,source", "recent,1,1,ledger"]
    assert not (tmp_path / "train.csv.partial").exists()
    said = capsys.readouterr().err
    assert "1 prompts from 1 ledger records" in said and "small: 1 labels, 1 correct" in said
    assert cli.main(["export", "--database-url", url, "--tenant", "nobody"]) == 0
    assert capsys.readouterr().out == "prompt,records,source\n"  # to stdout; no pools found


def started(
    confidence: float, *, on: str = "start", tried: str = "small", **kw: object
) -> LedgerEntry:
    """A cascade's record, its confidence computed on a stream's start (or an answer)."""
    return served(
        None, tried.split(",")[-1], strategy="cascade", tried=tried, confidence=confidence,
        confidence_on=on, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_cascade_confidences_keep_starts_answers_and_source_pools_apart(engine: Engine) -> None:
    write(
        engine,
        started(-0.1, at=T0), started(-0.9, tried="small,large", escalated=1, at=T0 + 1),
        started(-0.5, on="answer"), started(-0.7, tried="code,large"),
        served("no cascade", confidence=-0.2, confidence_on="answer"),
        started(-0.3, at=T0 - 100),
    )  # fmt: skip
    assert cascade_confidences(engine, on="start", source="small") == [-0.3, -0.1, -0.9]
    assert cascade_confidences(engine, on="start", source="small", since=T0) == [-0.1, -0.9]
    assert cascade_confidences(engine, on="answer", source="small") == [-0.5]
    assert cascade_confidences(engine, on="start", source="code") == [-0.7]


CONFIG = """applications:
- name: app
  import_path: deployments.app:build
  args:
    routing:
      cascade:
        stream_decide_tokens: 8
        rules:
        - {source: code, target: large, threshold: -1.0}
"""


def test_calibrate_from_the_ledger_writes_the_rules_stream_threshold(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    confidences = [-i / 100 for i in range(100)]
    write(engine, *(started(c, at=T0 + i) for i, c in enumerate(confidences)))
    write(engine, *(started(-5.0, on="answer") for _ in range(50)))  # not the start's
    config = tmp_path / "serve_config.yaml"
    config.write_text(CONFIG)
    url = str(engine.url)
    argv = ["calibrate-cascade", "--on", "start", "--database-url", url, "--strong-share", "0.2"]
    assert cli.main([*argv, "--write-config", str(config)]) == 0
    assert "20.0% of 100 logged small -> large cascades would escalate" in capsys.readouterr().out
    rules = yaml.safe_load(config.read_text())["applications"][0]["args"]["routing"]["cascade"]
    assert rules["stream_decide_tokens"] == 8 and rules["rules"][0]["threshold"] == -1.0
    added = rules["rules"][1]
    assert (added["source"], added["target"]) == ("small", "large")
    assert sum(c < added["stream_threshold"] for c in confidences) == 20
    # Again, for the whole answers: the same rule gets its `threshold`, nothing is added.
    argv[2] = "answer"
    assert cli.main([*argv, "--write-config", str(config)]) == 0
    rules = yaml.safe_load(config.read_text())["applications"][0]["args"]["routing"]["cascade"]
    # All 50 tie at -5.0: escalating none of them is the closest to 20%.
    assert len(rules["rules"]) == 2 and -5.001 < rules["rules"][1]["threshold"] < -5.0
    assert rules["rules"][1]["stream_threshold"] == added["stream_threshold"]


def test_calibrate_from_an_empty_ledger_says_so(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate-cascade", "--on", "start", "--database-url", str(engine.url)]
    assert cli.main([*argv, "--strong-share", "0.2"]) == 1
    assert "no confidences of 'small' cascades on the start" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, "--strong-share", "0.2", "--rule", "small"])
