"""make test's `--dist loadgroup` keeps the tests of one xdist_group in one worker (conftest: the SLURM tests, which
share one cluster, and the tests that signal a background run), only if xdist can tag their node ids: with pytest
9.2 and pytest-xdist 3.8 it could not, the groups were split over both workers, and one SLURM test's clean-up
cancelled another's jobs. Run outside xdist (plain pytest), there are no groups to check."""

import pytest

from tests.conftest import ONE_AT_A_TIME


@ONE_AT_A_TIME
def test_a_grouped_test_runs_under_its_group(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not an xdist worker of --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@signals"), f"xdist did not tag the grouped test: {request.node.nodeid}"
