"""A kvpress press that keeps, in each KV head, as many entries as a headprof allocation gives it."""

from headprof_kvpress.press import HeadprofBudgetPress, read_allocation

__all__ = ["HeadprofBudgetPress", "read_allocation"]
