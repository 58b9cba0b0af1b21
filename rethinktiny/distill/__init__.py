"""Knowledge distillation of an inherited student from its teacher, pure torch.

- `losses`: teacher log-probs on the compact vocabulary, forward KL at temperature T, its sparse
  (sampled / top-k) form;
- `teacher`: any source `inherit` reads, loaded frozen as our `PanGuPi`;
- `section`: the training config's `distill=dict(...)` and `check_distill_section`, the check
  the launcher runs before any rank starts;
- `cache`, `build`: the teacher cache (`rethinktiny distill cache`), keyed by token context.
InternEvo glue (the forward hook, the loss) lives in `rethinktiny.internevo.distill`.
"""

from rethinktiny.distill.section import DISTILL_KEYS, DistillSpec, check_distill_section, read_section

__all__ = ["DISTILL_KEYS", "DistillSpec", "check_distill_section", "read_section"]
