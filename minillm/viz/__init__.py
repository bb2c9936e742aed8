"""Pictures and text views of the engine's state, for notebooks, docs and terminals.

Every `draw_*` function takes the real engine objects (a `BlockManager`, sequences, a
`RadixPrefixCache`, a scheduler trace) and returns a matplotlib `Figure`; it never changes what
it draws. Each figure has a text twin (`*_text`) that notebooks check exactly under nbval and a
terminal can print. matplotlib and ipywidgets are imported inside the functions that use them,
so importing this package (or `minillm`) stays light, and the core modules never import it.

To drive a scheduler without a model, use `minillm.simulate` (made-up tokens).
"""

from minillm.viz.block_tables import block_tables_text, draw_block_tables
from minillm.viz.blocks import block_owners, block_pool_text, draw_block_pool
from minillm.viz.dashboard import (
    Dashboard,
    Throttle,
    dashboard_html,
    dashboard_text,
    draw_dashboard,
)
from minillm.viz.layers import (
    draw_gqa,
    draw_rope,
    draw_rope_wavelengths,
    gqa_groups,
    gqa_text,
    rope_angles,
    rope_frequencies,
    rope_text,
)
from minillm.viz.radix import draw_radix_tree, radix_events_text, tidy_layout
from minillm.viz.runner import (
    draw_sampler_filters,
    draw_step_inputs,
    sampler_filters_text,
    sampler_stages,
    step_inputs_text,
)
from minillm.viz.server import (
    draw_server_processes,
    draw_server_sequence,
    request_messages,
    server_channels_text,
    server_messages_text,
)
from minillm.viz.stats import draw_stats, stats_table_text
from minillm.viz.style import abbreviate_tokens, seq_color
from minillm.viz.timeline import (
    draw_kv_usage,
    draw_scheduler_trace,
    draw_timeline,
    timeline_cells,
    timeline_text,
)
from minillm.viz.widgets import SchedulerStepper

__all__ = [
    "Dashboard",
    "SchedulerStepper",
    "Throttle",
    "abbreviate_tokens",
    "block_owners",
    "block_pool_text",
    "block_tables_text",
    "dashboard_html",
    "dashboard_text",
    "draw_block_pool",
    "draw_block_tables",
    "draw_dashboard",
    "draw_gqa",
    "draw_kv_usage",
    "draw_radix_tree",
    "draw_rope",
    "draw_rope_wavelengths",
    "draw_sampler_filters",
    "draw_scheduler_trace",
    "draw_server_processes",
    "draw_server_sequence",
    "draw_stats",
    "draw_step_inputs",
    "draw_timeline",
    "gqa_groups",
    "gqa_text",
    "radix_events_text",
    "request_messages",
    "rope_angles",
    "rope_frequencies",
    "rope_text",
    "sampler_filters_text",
    "sampler_stages",
    "seq_color",
    "server_channels_text",
    "server_messages_text",
    "stats_table_text",
    "step_inputs_text",
    "tidy_layout",
    "timeline_cells",
    "timeline_text",
]
