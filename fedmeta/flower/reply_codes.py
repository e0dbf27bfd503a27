"""Error codes a hospital puts in an error reply, so the server can tell refusals apart."""

__all__ = ["BAD_ARRAYS", "HELD_OUT", "BUDGET_EXHAUSTED", "EVAL_FAILED"]

BAD_ARRAYS = 4001  # the parameters sent do not fit the model (shape, names, NaN/inf)
HELD_OUT = 4002  # the hospital is held out and never trains
BUDGET_EXHAUSTED = 4003  # training this round would take the hospital past its privacy cap
EVAL_FAILED = 4004  # the model gives non-finite predictions at this hospital: no score
