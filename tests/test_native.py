"""A native consumer that dies with a signal is one failing test that names the signal; the suite goes on."""

import pytest

from support import in_child


@pytest.mark.parametrize("name", ["SIGILL", "SIGSEGV"])
def test_a_crashing_child_fails_one_test_naming_the_signal(name):
    with pytest.raises(pytest.fail.Exception, match=f"llama.cpp died with {name} in die_with; see the README"):
        in_child("die_with", signal_name=name)


def test_a_failing_child_reports_its_error():
    with pytest.raises(pytest.fail.Exception, match="KeyError"):
        in_child("no_such_function")
