"""Goals and propensity: goal states computed from ClickHouse (``goals``), the model
(``propensity``: fitted with scikit-learn, stored as JSON numbers, scored with numpy), and
the scoring processor (``processor``) that turns stored batches into
``goalstream.propensity`` and ``goalstream.recommendations`` records."""
