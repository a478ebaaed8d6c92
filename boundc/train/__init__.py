"""Certified training: losses, schedules, data, models, metrics and the trainer.

Modules: :mod:`~boundc.train.losses`, :mod:`~boundc.train.schedules`,
:mod:`~boundc.train.data`, :mod:`~boundc.train.models`,
:mod:`~boundc.train.metrics`, :mod:`~boundc.train.trainer`.
"""
