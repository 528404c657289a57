"""Dataset formats (ShareGPT, ChatML, Alpaca): detection, conversion to and from
:class:`~pipeline.data.types.Conversation`.

* :mod:`~pipeline.data.formats.detect`: which format records look like;
* :mod:`~pipeline.data.formats.base`: what every conversion shares (issues, field paths);
* :mod:`~pipeline.data.formats.sharegpt`, :mod:`~pipeline.data.formats.chatml`,
  :mod:`~pipeline.data.formats.alpaca`: one raw record -> a conversation;
* :mod:`~pipeline.data.formats.output`: a conversation -> a ShareGPT or ChatML row.

The public entry point is :mod:`pipeline.data.converter`.
"""
