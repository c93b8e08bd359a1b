"""Camera-like streams: frame orders, held frames, per-visit severities, and the harm table."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from zoa_ros.core.data.domain_schedule import Visit, parse_schedule, scheduled_frames
from zoa_ros.core.data.stream import CorruptionStream
from zoa_ros.core.data.stream_order import StreamOrder, order
from zoa_ros.core.eval.harm import harm_table
from zoa_ros.tools.report import comparison_section, harm_section


def test_orders_parse_and_refuse() -> None:
    assert StreamOrder.parse("iid") == StreamOrder()
    assert StreamOrder.parse("class-sorted").kind == "class-sorted"
    assert StreamOrder.parse("dirichlet:0.1") == StreamOrder("dirichlet", 0.1)
    assert str(StreamOrder.parse("dirichlet:0.1")) == "dirichlet:0.1"
    for bad in ("sorted", "dirichlet", "dirichlet:0", "dirichlet:x", "iid:2"):
        with pytest.raises(ValueError, match="order"):
            StreamOrder.parse(bad)
    with pytest.raises(ValueError, match="needs the class"):
        StreamOrder.parse("class-sorted").permutation(None, 4, 0, "fog", 1)


def test_class_sorted_and_dirichlet_orders() -> None:
    labels = [c for c in range(20) for _ in range(5)]   # 20 classes x 5 images
    n = len(labels)
    iid = StreamOrder().permutation(labels, n, 3, "fog", 1)
    assert iid == order(n, 3, "fog", 1)    # the benchmark's order, unchanged
    ranked = StreamOrder.parse("class-sorted").permutation(labels, n, 3, "fog", 1)
    assert sorted(ranked) == list(range(n))
    classes = [labels[i] for i in ranked]
    # one run of each class, in class order from a seeded start (cyclically)
    start = classes.index(0)
    assert classes[start:] + classes[:start] == sorted(classes)
    # within a class the iid order is kept
    assert [i for i in ranked if labels[i] == 7] == [i for i in iid if labels[i] == 7]
    # another pass starts elsewhere; the same pass reproduces
    assert ranked == StreamOrder.parse("class-sorted").permutation(labels, n, 3, "fog", 1)

    def switches(seq: list[int]) -> int:
        return sum(labels[a] != labels[b] for a, b in pairwise(seq))

    strong = StreamOrder.parse("dirichlet:0.01").permutation(labels, n, 3, "fog", 1)
    weak = StreamOrder.parse("dirichlet:100").permutation(labels, n, 3, "fog", 1)
    assert sorted(strong) == sorted(weak) == list(range(n))
    # D -> 0 keeps a class together, large D mixes the classes like iid
    assert switches(strong) < 30 < switches(weak)


def test_schedule_severity_dwell_and_errors() -> None:
    assert parse_schedule("clean:3,fog@3:2") == [Visit("clean", 3), Visit("fog", 2, 3)]
    assert Visit("fog", 2, 3).name == "fog@3" and Visit("fog", 2).name == "fog"
    for bad, reason in [("clean@3:4", "no severity"), ("fog@6:4", "SEVERITY"),
                        ("fog@x:4", "SEVERITY"), ("fog@3", "DOMAIN")]:
        with pytest.raises(ValueError, match=reason):
            parse_schedule(bad)
    frames = list(scheduled_frames(parse_schedule("fog@3:5,fog:4,fog@3:3"), 4, seed=1, dwell=2))
    first = [f.image for f in frames if f.name == "fog@3"]
    seq = order(4, 1, "fog@3", 1)
    # each image held for 2 frames; the fog@3 visits continue one sequence, fog has its own
    assert first == [seq[0], seq[0], seq[1], seq[1], seq[2], seq[2], seq[3], seq[3]]
    assert [f.image for f in frames if f.name == "fog"] == \
        [order(4, 1, "fog", 1)[k // 2] for k in range(4)]
    assert {f.severity for f in frames if f.name == "fog@3"} == {3}
    with pytest.raises(ValueError, match="dwell"):
        list(scheduled_frames([Visit("fog", 2)], 4, seed=1, dwell=0))


def test_corruption_stream_holds_frames_and_follows_the_schedule() -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    labels = [5, 1, 4, 1, 0, 3]
    stream = CorruptionStream(crops, labels, list(range(6)), visits=parse_schedule(
        "clean:7,gaussian_noise@1:6,clean:5"), stream_order=StreamOrder.parse("class-sorted"),
        dwell=3, seed=2)
    segments = list(stream)
    assert [(s.name, s.round, len(s)) for s in segments] == \
        [(i.name, i.round, i.frames) for i in stream.plan()] == \
        [("clean", 1, 7), ("gaussian_noise@1", 1, 6), ("clean", 2, 5)]
    noisy = segments[1]
    assert noisy.frames[0] is noisy.frames[1] is noisy.frames[2]   # one held image
    assert not np.array_equal(noisy.frames[0], noisy.frames[3])
    clean = segments[0].labels + segments[2].labels    # one sequence across the visits
    held = clean[::3]
    assert clean == [y for y in held for _ in range(3)][:12]
    start = held.index(min(held))
    assert held[start:] + held[:start] == sorted(held)
    described = stream.describe()
    assert (described["order"], described["dwell"]) == ("class-sorted", 3)
    assert described["schedule"] == "clean:7,gaussian_noise@1:6,clean:5"


def _result(accs: dict[str, list[float]], heads: dict[str, list[float]]) -> dict:
    names = ["clean", "fog", "clean"]
    return {"labelled": True, "methods": {m: {"domains": [
        {"name": n, "round": 1 + (i == 2), "frames": 100, "acc": a, "acc_head": h}
        for i, (n, a, h) in enumerate(zip(names, accs[m], heads[m]))]} for m in accs}}


def test_harm_table_and_its_report() -> None:
    result = _result({"none": [80.0, 40.0, 80.0], "zoa": [79.0, 50.0, 77.0]},
                     {"none": [80.0, 30.0, 80.0], "zoa": [79.0, 35.0, 70.0]})
    harm = harm_table(result)
    zoa = harm["methods"]["zoa"]
    assert [r["diff"] for r in zoa["domains"]] == [-1.0, 10.0, -3.0]
    assert [r["diff_head"] for r in zoa["domains"]] == [-1.0, 5.0, -10.0]
    assert zoa["mean_diff"] == pytest.approx(2.0)
    assert zoa["worst"] == {"name": "clean", "round": 2, "diff": -3.0}
    assert (zoa["clean_segments"], zoa["clean_worst_diff"], zoa["clean_mean_diff"]) == \
        (2, -3.0, -2.0)
    assert (zoa["shifted_worst_diff"], zoa["shifted_mean_diff"]) == (10.0, 10.0)
    lines = "\n".join(harm_section(harm))
    assert "| 2 | **clean** | 100 | -3.00 / -10.00 |" in lines
    assert "clean (round 2) -3.00" in lines and "-3.00 / -2.00 (2 segments)" in lines
    # no reference, or no labels: no table
    assert harm_table({"labelled": True, "methods": {"zoa": {"domains": []}}}) is None
    assert harm_table({**result, "labelled": False}) is None
    assert harm_section(None) == []


def test_report_against_another_run() -> None:
    bank = _result({"zoa": [80.0, 50.0, 80.0]}, {"zoa": [80.0, 40.0, 70.0]})
    empty = _result({"zoa": [80.0, 45.0, 81.0]}, {"zoa": [80.0, 30.0, 70.0]})
    lines = "\n".join(comparison_section(bank, empty, "the empty bank"))
    assert "| 1 | fog | 100 | +5.00 / +10.00 |" in lines
    assert "| 2 | clean | 100 | -1.00 / +0.00 |" in lines
    assert "**+1.33 / +3.33**" in lines
    other = _result({"zoa": [1.0, 2.0, 3.0]}, {"zoa": [1.0, 2.0, 3.0]})
    other["methods"]["zoa"]["domains"][1]["frames"] = 99
    with pytest.raises(ValueError, match="different streams"):
        comparison_section(bank, other, "x")
