"""smolsft: the library beneath the course's files.

The repository root holds the course's files (Parts 1-7, ``utils.py``); they import this
package, and it imports them only through the masking functions the trainer calls
(:func:`smolsft.data.sft.mask_function`). Each sub-package is one job; a layer imports
only the ones below it:

    report, simulator          run summaries, comparisons, the user simulator's measures
    evaluation, generation     metrics and statistics; vLLM / transformers generation, response files
    train                      run plan, resume, checkpoints, settings, Trainer additions
    data, losses, kernels      training features; the chunked and fused losses; CPU kernels
    chat, hardware             the chat format and tokenizer; GPU/CPU probe and decisions
    files, lock                paths and JSONL reading; one writer per folder
"""
