"""bgmock-twin: a digital twin of the BGMock interbank payment system."""

__version__ = "0.1.0"
