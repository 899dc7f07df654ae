"""Falco-compatible runtime security: rules files in, alerts out.

The pipeline, one module per step (pure code: nothing here touches the kernel)::

    rules YAML --loader--> RuleSet (lists, macros, rules; LoadResult with every problem)
    condition text --parser--> ast.Node --(macros resolved, lists expanded)--> compiler --> Filter
    (Event, Context) --engine--> for each rule indexed under the event's type: Filter(ev, ctx)
                     --outputs--> Alert (Falco's text line and JSON) --app.channels--> stdout/file/syslog/...

Contracts between the modules (each module's own docstring has the details):

``fields``
    ``FIELDS.lookup(name: str, arg: str | None) -> Extractor`` raises
    ``UnknownFieldError`` / ``FieldArgError`` (both ``RuleError``).
    ``Extractor(ev, ctx) -> value | None``; ``None`` is Falco's ``<NA>``. ``Extractor.type`` is a
    ``FieldType``; a ``Multi`` (tuple subclass) value means "true if any element matches"
    (Falco's ``fd.ip``, ``fd.port``, ``fd.net``...). ``render(value, type) -> str`` is the
    text Falco prints in an output string; ``json_value(value, type)`` the typed JSON value.
    ``ev`` is :class:`andon.events.schema.Event`, ``ctx`` :class:`andon.app.enrich.Context`.

``parser`` / ``ast``
    ``parse_condition(text: str) -> ast.Node`` raises ``RuleSyntaxError`` with the offset of
    the problem. Node classes are plain frozen dataclasses carrying ``pos`` (offset in text).

``compiler``
    ``resolve(node, macros: dict[str, ast.Node], lists: dict[str, list[str]]) -> ast.Node``
    expands list references inside ``in``/``intersects``/``pmatch`` value lists and replaces
    macro identifiers by their (already resolved) trees; raises ``UndefinedMacroError`` /
    ``MacroCycleError``.
    ``compile_filter(node, fields=FIELDS) -> Filter``; ``Filter(ev, ctx) -> bool``;
    ``Filter.evttypes -> frozenset[str] | None`` (the event types the condition can match,
    Falco's evttype index; ``None`` means every type); ``Filter.fields`` the field names used.

``loader``
    ``load_rules(sources: list[tuple[str, str]]) -> LoadResult`` (``(filename, text)`` pairs, in
    order). ``LoadResult.errors`` / ``.warnings``: ``Problem(code, message, file, line, col,
    snippet, hint)``; ``LoadResult.ruleset`` only when there are no errors.
    ``RuleSet.rules: list[Rule]`` in file order; ``Rule(name, desc, condition, output,
    priority: Priority, tags, enabled, source, filter: Filter, output_fmt, file, line)``.

``outputs``
    ``OutputFormat.parse(text) -> OutputFormat`` (``%field``, ``%field[arg]``, ``%(field)``);
    ``OutputFormat.format(ev, ctx) -> (text, output_fields)``; ``make_alert(rule, ev, ctx,
    hostname) -> Alert``; ``Alert.to_json() -> dict`` with Falco's schema; ``Alert.text_line()``.

``engine``
    ``RuleEngine(ruleset, settings)``; ``engine.evttypes()`` the union needed;
    ``engine.process(ev, ctx) -> list[Alert]``.
"""
