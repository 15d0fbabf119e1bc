import pytest

from packager.evaluate.scorers import SCORERS, normalize, picked_choice, rouge_l, token_f1
from packager.evaluate.suite import SuiteItem


def item(**kw):
    base = {"id": "x", "prompt": "p", "reference": "r", "scorer": "exact"}
    base.update(kw)
    return SuiteItem.model_validate(base)


def test_normalize_drops_case_punctuation_articles():
    assert normalize("  The Answer, is: PARIS!  ") == "answer is paris"


@pytest.mark.parametrize("output,ref,expected", [
    ("Paris", "paris", 1.0),
    ("Paris.\nIt is the capital.", "Paris", 1.0),  # first line counts
    ("The capital is Paris", "Paris", 0.0),
    ("42", ["41", "42"], 1.0),
])
def test_exact(output, ref, expected):
    assert SCORERS.get("exact")(output, item(reference=ref)) == expected


def test_contains_is_whole_word():
    it = item(scorer="contains", reference="cat")
    assert SCORERS.get("contains")("The cat sat.", it) == 1.0
    assert SCORERS.get("contains")("A category error.", it) == 0.0


def test_regex_case_insensitive_and_any_reference():
    it = item(scorer="regex", reference=[r"\b12\b", r"twelve"])
    assert SCORERS.get("regex")("The answer is 12.", it) == 1.0
    assert SCORERS.get("regex")("TWELVE", it) == 1.0
    assert SCORERS.get("regex")("112", it) == 0.0


def test_choice_takes_first_named_choice():
    it = item(scorer="choice", reference="positive", choices=["positive", "negative"])
    assert SCORERS.get("choice")("Positive, not negative.", it) == 1.0
    assert SCORERS.get("choice")("negative. it is not positive", it) == 0.0
    assert SCORERS.get("choice")("I cannot tell.", it) == 0.0
    assert picked_choice("maybe neutral", ["positive", "negative"]) is None


def test_f1_known_values():
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / ((2 / 2) + (2 / 3)))
    assert token_f1("dog", "cat") == 0.0
    assert SCORERS.get("f1")("cat sat", item(scorer="f1", reference=["dog", "cat sat"])) == 1.0


def test_rouge_l_known_values():
    # LCS of "a b c d" and "a c d e" (articles dropped: use words that survive normalisation)
    assert rouge_l("w x y z", "w y z q") == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert rouge_l("", "w") == 0.0
    assert SCORERS.get("rouge_l")("w x y z", item(scorer="rouge_l", reference="w x y z")) == 1.0


def test_unknown_scorer_lists_known():
    from packager.errors import ConfigError

    with pytest.raises(ConfigError, match="Known: .*contains.*exact"):
        SCORERS.get("bleu")


@pytest.mark.parametrize("output,expected", [
    ('{"name": "Ana Silva", "age": 31}', 1.0),
    ('Sure:\n```json\n{"name": "ana silva.", "age": "31"}\n```', 1.0),  # fences, case, punctuation, number as text
    ('{"name": "Ana", "age": 31}', 0.5),
    ('{"full_name": "Ana Silva", "age": 30}', 0.0),
    ("name: Ana Silva, age: 31", 0.0),  # no JSON object at all
    ('{broken {"name": "Ana Silva", "age": 31}', 1.0),  # the first object that parses
    ('[{"name": "Ana Silva"}]', 0.0 + 0.5),  # an object inside a list still counts as the first object
])
def test_json_fields(output, expected):
    it = item(scorer="json_fields", reference='{"name": "Ana Silva", "age": "31"}')
    assert SCORERS.get("json_fields")(output, it) == pytest.approx(expected)


@pytest.mark.parametrize("ref", ["not json", "[1, 2]", "{}"])
def test_json_fields_reference_must_be_an_object(ref):
    with pytest.raises(ValueError, match="JSON object"):
        item(scorer="json_fields", reference=ref)
