"""The prompt queue: which queued prompt an annotator labels next, as SQL the store runs, and who is
working on which prompt right now.

Order. *Next queued prompt* serves the unseen prompt expected to teach the most
(`Store.next_prompt`): first prompts whose votes split, then prompts nobody labeled yet, then
labeled ones by the widest gap between two answers' lengths.

What "split" means. Votes split when annotators judged the same thing differently: two votes on one
comparison that differ, or votes on two comparisons of the same two models that prefer different
ones. An `a` on one comparison and a `b` on another says nothing by itself: the sides are shuffled
per comparison, and two comparisons of the base against itself are four different samples.
Comparing the letters across comparisons made half of all re-served prompts look disputed; and a
round that beats the base, then a later round that beats that one, agree rather than dispute.

Holds. Two annotators who press *Next queued prompt* in the same minute would get the same prompt
(neither has labeled it yet), each generate their own comparison of it, and do the team's work
twice while leaving the rest of the queue waiting. A prompt served to one annotator is held for
them until they take another one or `HOLD_S` passes (they may have left). Others get a held prompt
only when every prompt left for them is held, so a short queue never turns anyone away. A
comparison from the double-labeled share is held the same way, and skipped while someone else
holds it: one second vote is what agreement needs. Holds live in the app's memory: after a restart
every page takes a new prompt anyway, and only the app serves the queue.
"""

from __future__ import annotations

import threading
import time

HOLD_S = 15 * 60  # about three slow comparisons; an annotator who left for longer loses their hold

# Prompts the annotator has neither voted on nor been served (a comparison they generated and skipped
# counts as served, so a skip does not come back forever), scored by `information`.
UNSEEN = """
    WITH seen AS (
        SELECT prompt_id FROM comparisons WHERE annotator = ? AND prompt_id IS NOT NULL
        UNION SELECT c.prompt_id FROM votes v JOIN comparisons c ON c.id = v.comparison_id
              WHERE v.annotator = ? AND c.prompt_id IS NOT NULL),
    verdicts AS (  -- the model a vote preferred (or tie / both_bad); NULL where both sides are one model
        SELECT c.prompt_id, c.id AS comparison_id, v.choice,
               least(c.model_a, c.model_b) AS model_x, greatest(c.model_a, c.model_b) AS model_y,
               CASE WHEN c.model_a = c.model_b THEN NULL
                    WHEN v.choice = 'a' THEN c.model_a WHEN v.choice = 'b' THEN c.model_b
                    ELSE v.choice END AS verdict
        FROM votes v JOIN comparisons c ON c.id = v.comparison_id WHERE c.prompt_id IS NOT NULL),
    disputed AS (  -- two votes on one comparison that differ, or on one pair of models that differ
        SELECT prompt_id FROM verdicts GROUP BY prompt_id, comparison_id HAVING count(DISTINCT choice) > 1
        UNION SELECT prompt_id FROM verdicts GROUP BY prompt_id, model_x, model_y
              HAVING count(DISTINCT verdict) > 1),
    labels AS (
        SELECT prompt_id, count(*) AS n, prompt_id IN (SELECT prompt_id FROM disputed) AS split
        FROM verdicts GROUP BY prompt_id),
    gaps AS (
        SELECT prompt_id, max(abs(length(answer_a) - length(answer_b))
                              / greatest(length(answer_a), length(answer_b), 1)) AS gap
        FROM comparisons WHERE prompt_id IS NOT NULL GROUP BY prompt_id)
    SELECT p.id, p.messages, p.source, p.category, p.reference, coalesce(l.n, 0) AS labels,
           CASE WHEN l.n IS NULL THEN 1.0
                ELSE 2.0 * l.split::INTEGER + coalesce(g.gap, 0.0) END AS information
    FROM prompts p LEFT JOIN labels l ON l.prompt_id = p.id LEFT JOIN gaps g ON g.prompt_id = p.id
    WHERE p.id NOT IN (SELECT prompt_id FROM seen)"""

# The next one for an annotator: prompts others hold last, then the one they hold themselves first
# (what their pre-generated comparison is for), then by information; ties go to the least labeled,
# then the oldest. Parameters: the annotator twice (UNSEEN), the ids others hold, the annotator's own.
NEXT = UNSEEN + """
    ORDER BY list_contains(?::INTEGER[], p.id), p.id IS NOT DISTINCT FROM ?::INTEGER DESC,
             information DESC, labels, p.id
    LIMIT 1"""

# Which prompts are labeled twice: a fixed share picked by a hash of the prompt id, so every
# process and restart agrees on it without storing anything.
DOUBLE = "((p.id * 2654435761) % 1000) < ?"


class PromptHolds:
    """What each annotator was served last, and when: a queued prompt (its id, an int) or, from the
    double-labeled share, a comparison to vote on (its id, a str). `serving` makes choosing a task and
    holding it one step, so two annotators asking at once never get the same one."""

    def __init__(self, hold_s: float = HOLD_S, clock=time.monotonic):
        self.hold_s = hold_s
        self._clock = clock
        self._held: dict[str, tuple[int | str, float]] = {}  # annotator -> (prompt or comparison id, served at)
        self.serving = threading.Lock()

    def _live(self) -> dict[str, int | str]:
        now = self._clock()
        return {who: task for who, (task, since) in self._held.items() if now - since < self.hold_s}

    def held_by_others(self, annotator: str, kind: type = int) -> list:
        """The prompt ids (`kind` int) or comparison ids (str) that others hold."""
        return sorted({task for who, task in self._live().items() if who != annotator and isinstance(task, kind)})

    def held_by(self, annotator: str) -> int | None:
        """The queued prompt `annotator` holds, if any."""
        task = self._live().get(annotator)
        return task if isinstance(task, int) else None

    def hold(self, annotator: str, task: int | str) -> None:
        """`annotator` works on `task` from now on; whatever they held before is free again."""
        self._held[annotator] = (task, self._clock())

    def release(self, annotator: str) -> None:
        """`annotator` voted: what they held is done (annotators take their next one at once, as it is
        pre-generated; an admin, who has no pre-generation, would otherwise hold it for HOLD_S)."""
        self._held.pop(annotator, None)
