"""``precision="exact"`` keeps TF's answers: the TF parity tests (tests/test_parity.py), with their tolerances, run
on whatever fp32 engine ``Detector.from_weights(backend="auto", precision="exact")`` picks on this machine (from the
table ``make install`` measured, else measured now in a child process)."""

import pytest

from tests import test_parity
from tests.test_parity import IMAGES


@pytest.fixture(scope="module")
def exact_detector():
    from detector.inference import Detector

    detector = Detector.from_weights("person", backend="auto", precision="exact")
    assert detector.choice.precision == "fp32", detector.backend_reason
    return detector


@pytest.mark.parametrize("name", IMAGES)
def test_the_exact_engine_matches_tensorflow(golden, exact_detector, name):
    test_parity.test_matches_tensorflow(golden, exact_detector, name)


@pytest.mark.parametrize("name", IMAGES)
def test_the_exact_engine_keeps_all_of_tensorflow_s_candidates(golden, exact_detector, name):
    test_parity.test_all_candidates_match_tensorflow(golden, exact_detector, name)
