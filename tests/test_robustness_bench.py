"""bench/robustness.py on a real run: every corruption and outside set scored through predict's framing."""

import re
import sys

import pytest
from conftest import ROOT, run_python

sys.path.insert(0, str(ROOT / "bench"))
from corruptions import CORRUPTIONS  # noqa: E402


@pytest.mark.slow  # a benchmark run end to end (about 25 s)
def test_robustness_bench_prints_a_row_per_set_and_the_mean(smoke_run):
    result = run_python(["bench/robustness.py", str(smoke_run[0]), "--count", "20"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    for name in ["clean", *CORRUPTIONS, "boxed", "underlined", "marker", "photos", "fonts", "hand_fonts", "strokes",
                 "handwriting", "enlarged"]:
        assert re.fullmatch(r"\d+\.\d%", rows[name][-1]), rows.get(name)
    assert rows["clean"][1] == rows["boxed"][1] == rows["underlined"][1] == rows["marker"][1] == rows["photos"][1] == "20"
    assert rows["handwriting"][1] == rows["enlarged"][1] == "898"  # the report half of 1,797
    assert "corruptions" in rows


@pytest.mark.parametrize("part", ["select", "report"])
def test_every_printed_digit_is_drawn(part):
    # Two of matplotlib's fonts (DejaVu's "Display" ones) have no digits: they drew blank images, scored as misreads.
    from outside_digits import fonts, hand_fonts

    for (images, labels), least in ((fonts(part), 400), (hand_fonts(part), 40)):
        assert len(images) == len(labels) >= least
        assert all(min(image.getextrema()) < 128 for image in images)  # dark ink on the light paper
