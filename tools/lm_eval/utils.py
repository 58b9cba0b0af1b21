"""Document preparation for rethinktiny_sample_choice.yaml (lm-eval imports it by file path)."""

CONTEXT_CHARS = 48
CHOICE_CHARS = 32


def choice_docs(dataset):
    """Documents long enough for a context and a continuation, with the two choices: the real
    continuation first (doc_to_target 0) and the same characters reversed."""

    def build(doc):
        real = doc["text"][CONTEXT_CHARS:CONTEXT_CHARS + CHOICE_CHARS]
        return {"context": doc["text"][:CONTEXT_CHARS], "choices": [real, real[::-1]]}

    long_enough = dataset.filter(lambda doc: len(doc["text"]) >= CONTEXT_CHARS + CHOICE_CHARS
                                 and doc["text"][CONTEXT_CHARS:CONTEXT_CHARS + CHOICE_CHARS].strip() != "")
    return long_enough.map(build)
