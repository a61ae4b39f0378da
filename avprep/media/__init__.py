"""The decoding engine: one opened container -> media facts, frames and audio on one timeline.

PyAV decodes in-process (``container``, ``probe``, ``frames``, ``audio``); the
ffmpeg-CLI pipe and decord (``avprep.decode``) are the alternatives behind the
same interface, chosen by ``decoder.Decoder``. Nothing here imports ``av`` at
package level, so the CLI can list the choices without loading FFmpeg.
"""
