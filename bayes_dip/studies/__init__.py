"""Calibration studies: YAML-configured, resumable comparisons of uncertainty methods.

Entry point :func:`run_study` ``(config, out_dir, progress=True, workers=0, scheduler=None)
-> StudyResults`` (used by ``bayes-dip calibrate --config study.yaml`` and the scripts in
``experiments/``); ``workers``/``scheduler`` run it on Dask (:mod:`bayes_dip.studies.parallel`).
The YAML schema is documented in :mod:`bayes_dip.studies.config`, the methods in
:mod:`bayes_dip.studies.methods`.
"""
from bayes_dip.studies.config import (FigureOptions, MetricsOptions, Setting, StudyConfig,
                                      load_study_config)
from bayes_dip.studies.context import MethodContext
from bayes_dip.studies.methods import METHODS, MethodSpec, register_method
from bayes_dip.studies.runner import StudyResults, collect_results, run_study
from bayes_dip.studies.parallel import StudyTasksFailed

__all__ = ["run_study", "StudyResults", "collect_results", "StudyConfig", "load_study_config",
           "Setting", "MetricsOptions", "FigureOptions", "METHODS", "MethodSpec",
           "register_method", "MethodContext", "StudyTasksFailed"]
