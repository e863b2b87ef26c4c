"""experiments/bench_laplace_vs_laplace_torch.py without laplace-torch: the skip message, the
agreement check on our library alone, and the whole run against a stand-in for laplace-torch
(our ``Laplace`` behind laplace-torch's call signatures) on a tiny network."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from repo_scripts import load_script
from bayes_dip.laplace import Laplace
from bayes_dip.runtime import THREAD_ENV_VARS

bench = load_script("experiments/bench_laplace_vs_laplace_torch.py")
TINY = ["--epochs", "1", "--hidden", "8", "--steps", "5", "--structures", "ll_kfac,diag"]


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """main() sets the thread count of torch and of the BLAS pools (and their variables)."""
    for name in THREAD_ENV_VARS:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class StandIn:
    """laplace-torch's ``Laplace(...)``, ``fit``, ``optimize_prior_precision``, ``__call__`` on our library;
    ``extra_steps`` makes it do different work than ours."""

    extra_steps = 0

    def __init__(self, model, likelihood, subset_of_weights, hessian_structure):
        structure = {"kron": "kfac", "diag": "diag", "full": "full"}[hessian_structure]
        self.la = Laplace(model, likelihood, subset=subset_of_weights, structure=structure)

    def fit(self, loader):
        self.la.fit(tuple(loader.dataset.tensors), batch_size=loader.batch_size)

    def optimize_prior_precision(self, method, n_steps, lr, pred_type, link_approx):
        assert (method, pred_type, link_approx) == ("marglik", "glm", "probit")
        self.la.optimize_prior_precision(method, n_steps=n_steps + self.extra_steps, lr=lr)

    def __call__(self, x, pred_type, link_approx):
        return self.la.predict(x, pred_type=pred_type, link=link_approx)

    @property
    def prior_precision(self):
        return self.la.prior_precision

    def log_marginal_likelihood(self):
        return self.la.log_marginal_likelihood()


def test_without_laplace_torch_it_prints_how_to_install_it_and_exits_0(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "laplace", None)  # `import laplace` raises ImportError
    assert bench.import_laplace_torch() is None
    assert bench.main(TINY) == 0
    out = capsys.readouterr().out
    assert out.startswith("laplace-torch is not importable")
    assert "python -m venv --system-site-packages ltenv" in out and "ltenv/bin/pip install laplace-torch" in out
    assert "|" not in out  # no table: nothing was timed


def test_agreement_accepts_the_same_work_and_rejects_different_work():
    train, _, test = bench._splits(0)
    config = bench.TrainConfig(arch="mlp", epochs=1, batch_size=64, weight_decay=1e-3, seed=0,
                               model_kwargs={"hidden": [8]})
    model, _ = bench.load_or_train(config, train, 10, None)
    a = bench.run_ours(model, "ll_kfac", train, test, steps=20)
    b = bench.run_ours(model, "ll_kfac", train, test, steps=20)
    assert set(a.seconds) == set(bench.STAGES) and all(t > 0 for t in a.seconds.values())
    check = bench.agreement(a, b, test.labels)
    assert check["agree"] and check["nll_ours"] == check["nll_theirs"] and check["prec_ours"] == check["prec_theirs"]
    c = bench.run_ours(model, "ll_kfac", train, test, steps=3)  # another δ
    check = bench.agreement(a, c, test.labels)
    assert not check["agree"] and abs(check["prec_ours"] - check["prec_theirs"]) > 1e-3 * check["prec_theirs"]
    assert bench.agreement(a, c, test.labels, tol=10.0)["agree"]


@pytest.mark.parametrize("extra_steps,code", [(0, 0), (20, 1)])
def test_whole_run_against_a_stand_in_prints_the_table(monkeypatch, capsys, extra_steps, code):
    monkeypatch.setattr(StandIn, "extra_steps", extra_steps)
    monkeypatch.setattr(bench, "import_laplace_torch", lambda: StandIn)
    assert bench.main(TINY + ["--repeats", "2"]) == code
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ll_kfac") or line.startswith("| diag")]
    assert len(rows) == 2 * (len(bench.STAGES) + 1)
    assert all(float(row.split("|")[5]) > 0 for row in rows)  # ratio column
    assert ("disagree" in out) == (code == 1)


def test_bad_structures_are_rejected():
    with pytest.raises(SystemExit):
        bench.main(["--structures", "ll_kfac,lowrank"])
