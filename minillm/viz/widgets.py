"""An ipywidgets control to step a real scheduler in JupyterLab, one `schedule()` per click.

There is no model yet: the tokens come from `token_fn(seq) -> int`, by default
`minillm.simulate.made_up_token`. Each step is `minillm.simulate.step` (schedule, make up
tokens, postprocess), the same call the notebooks and `minillm simulate` use.
"""

from __future__ import annotations

from minillm.scheduler import Scheduler
from minillm.simulate import TokenFn, made_up_token
from minillm.simulate import step as simulate_step
from minillm.viz.figure import require


class SchedulerStepper:
    """Buttons "step" and "run to end" over a `Scheduler`, redrawing pool and timeline.

    Display it as the last expression of a cell (or `display(stepper)`). The scheduler should
    be built with `trace=True` for the timeline to show; the block pool is drawn either way.
    `step()` and `run_to_end()` do what the buttons do, for scripts and tests.
    """

    def __init__(self, scheduler: Scheduler, token_fn: TokenFn = made_up_token,
                 max_steps: int = 10_000) -> None:
        require("ipywidgets")
        import ipywidgets as w

        self.scheduler = scheduler
        self.token_fn = token_fn
        self.max_steps = max_steps
        self.last_batch_text = "no step yet"
        self.figures: list = []  # the Figures drawn last: block pool, then timeline
        self.step_button = w.Button(description="step", icon="step-forward")
        self.run_button = w.Button(description="run to end", icon="fast-forward")
        self.status = w.HTML()
        self.output = w.Output()
        self.step_button.on_click(lambda _: self.step())
        self.run_button.on_click(lambda _: self.run_to_end())
        self.widget = w.VBox([w.HBox([self.step_button, self.run_button]), self.status,
                              self.output])
        self.redraw()

    def step(self) -> None:
        """One engine step with made-up tokens, then redraw."""
        if self.scheduler.has_unfinished():
            self._step()
        self.redraw()

    def run_to_end(self) -> None:
        """Step until every sequence finishes (at most `max_steps`), then redraw once."""
        for _ in range(self.max_steps):
            if not self.scheduler.has_unfinished():
                break
            self._step()
        self.redraw()

    def _step(self) -> None:
        simulate_step(self.scheduler, self.token_fn)
        trace = self.scheduler.trace
        self.last_batch_text = (trace[-1].to_text() if trace
                                else f"step {self.scheduler.num_steps - 1} done")

    def redraw(self) -> None:
        """Redraw the block pool and the timeline into the Output widget."""
        from IPython.display import display

        from minillm.viz.blocks import draw_block_pool
        from minillm.viz.timeline import draw_scheduler_trace

        s = self.scheduler
        done = not s.has_unfinished()
        self.step_button.disabled = self.run_button.disabled = done
        stats = s.stats()
        self.status.value = (f"<code>{self.last_batch_text}</code><br>running {stats['running']}"
                             f", waiting {stats['waiting']}, finished {stats['finished']}, "
                             f"preemptions {stats['preemptions']}" + (" — done" if done else ""))
        self.figures = [draw_block_pool(s.block_manager, s.running)]
        if s.trace:
            self.figures.append(draw_scheduler_trace(s.trace))
        self.output.clear_output(wait=True)
        with self.output:
            for fig in self.figures:
                display(fig)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
