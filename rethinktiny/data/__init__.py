"""InternEvo tokenized data (reader/writer) and text -> tokens preparation."""
