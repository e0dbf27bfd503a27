"""Error codes a hospital puts in an error reply, so the server can tell refusals apart."""

__all__ = ["BAD_ARRAYS", "HELD_OUT", "BUDGET_EXHAUSTED", "EVAL_FAILED", "POLICY_REFUSED", "LEDGER_INVALID",
           "REFUSALS"]

BAD_ARRAYS = 4001  # the parameters sent do not fit the model (shape, names, NaN/inf)
HELD_OUT = 4002  # the hospital is held out and never trains
BUDGET_EXHAUSTED = 4003  # training this round would take the hospital past its privacy cap
EVAL_FAILED = 4004  # the model gives non-finite predictions at this hospital: no score
POLICY_REFUSED = 4005  # the run asks for less privacy than the hospital's own policy allows
LEDGER_INVALID = 4006  # the hospital's ledger is broken, rolled back or rewritten: it cannot train on it
REFUSALS = (POLICY_REFUSED, LEDGER_INVALID)  # the hospital will not train in this run
