"""Pipeline grammar: parse, validate, canonical print, round trip."""

import pytest

from onnxopt import UsageError
from onnxopt.pipeline import parse


def test_canonical_form_fills_every_option():
    assert str(parse("cleanup")) == "cleanup{lift-constants=true cse=true max-iters=8}"


def test_bare_key_means_true_and_values_convert():
    p = parse("cleanup{cse=false lift-constants max-iters=3}")
    opts = p.elements[0].options
    assert (opts.cse, opts.lift_constants, opts.max_iters) == (False, True, 3)


@pytest.mark.parametrize("text", [
    "cleanup",
    "cleanup,cleanup{cse=false}",
    "fixpoint{max-iters=4}(cleanup,cleanup{lift-constants=false})",
    "fixpoint(fixpoint{max-iters=2}(cleanup)),cleanup",
    "  cleanup { cse = false }  ,  cleanup ",
])
def test_round_trip(text):
    p = parse(text)
    assert parse(str(p)) == p
    assert str(parse(str(p))) == str(p)


@pytest.mark.parametrize("text, message", [
    ("", "empty pipeline"),
    ("nope", "unknown pass 'nope'; known passes: cleanup"),
    ("cleanup{bogus=1}", "unknown option 'bogus' (valid: lift-constants, cse, max-iters)"),
    ("cleanup{cse=maybe}", "expected true or false"),
    ("cleanup{max-iters=x}", "expected an integer"),
    ("cleanup{max-iters}", "needs a value"),
    ("cleanup{cse=true cse=false}", "given twice"),
    ("cleanup{cse=true", "expected '}'"),
    ("cleanup(cleanup)", "takes no nested pipeline"),
    ("fixpoint", "needs a nested pipeline"),
    ("fixpoint{max-iters=0}(cleanup)", "max-iters must be >= 1"),
    ("cleanup,,cleanup", "expected a pass name"),
    ("cleanup)", "unexpected ')'"),
])
def test_errors_are_usage_errors_that_explain(text, message):
    with pytest.raises(UsageError) as info:
        parse(text)
    assert message in str(info.value)


def test_empty_tuple_option_round_trips():
    from dataclasses import dataclass

    from onnxopt import options as opts

    @dataclass(frozen=True)
    class O:
        ids: tuple[int, ...] = ()
        flag: bool = False

    text = " ".join(f"{k}={opts.format_value(v)}" for k, v in opts.as_pairs(O()))
    assert text == 'ids="" flag=false'
    assert opts.convert("", tuple[int, ...], "x") == ()
    assert opts.convert("3,7", tuple[int, ...], "x") == (3, 7)
