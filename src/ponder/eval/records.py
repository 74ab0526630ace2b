"""The per-token record schema shared by ``ponder eval`` (writer) and ``ponder.analysis`` (reader).

One row per scored token, written to ``RUN_DIR/eval/<split>.parquet``. The Parquet file's
key/value metadata carries ``ponder_records_version`` (must equal ``RECORDS_VERSION``) and
``ponder_run`` (a JSON dict: policy name, task name, model kind, max_steps, ...).

Fixed columns (``flops`` is optional: older records lack it):
    example      int64   example index within the split
    split        string
    position     int64   token position in the example
    token        string  the input token at that position
    target       string
    prediction   string
    correct      bool
    complexity   int64
    steps        int64   steps the model used for this token (tape tokens read, for AdaTape)
    max_steps    int64   N of the model
    seen_label   bool    False when the target never occurs as a label in train (ood)
    seq_correct  bool    every scored token of that example is correct
    flops        float64 forward FLOPs this token really used (``ModelOutput.flops``: blocks
                         entered with the keys it saw, FFN / router costs of its kinds, its
                         share of AdaTape's tape; NaN when the model does not count them)
    expert       float64 the token's first-choice expert in the last routed-expert FFN it
                         entered (prelude or core; written only by models with a routed FFN
                         kind; NaN where none ran)
Variable columns:
    param_<knob>  the example's size / difficulty parameters (``Example.params``)
    feat_<name>   the task's per-position features (``position`` included), float64 (NaN = undefined)
"""

RECORDS_VERSION = 1
FIXED_COLUMNS = ("example", "split", "position", "token", "target", "prediction", "correct",
                 "complexity", "steps", "max_steps", "seen_label", "seq_correct")
# written when the model counts them (older records lack them)
OPTIONAL_COLUMNS = ("flops", "expert")
PARAM_PREFIX = "param_"
FEATURE_PREFIX = "feat_"
