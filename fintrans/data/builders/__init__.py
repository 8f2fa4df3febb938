"""One module per dataset: its tfds builder and the reader from its records to pipeline sources."""
from fintrans.data.builders import (chars, digits, finai_sentences, patient_visits, seattle_weather, sp500, stocks,
                                    synthetic_scenes, uea)

SPECS = {spec.name: spec for spec in (
    chars.SPEC, digits.SPEC, sp500.SPEC, finai_sentences.SPEC, synthetic_scenes.SPEC, stocks.SPEC,
    seattle_weather.SPEC, uea.BASIC_MOTIONS, uea.JAPANESE_VOWELS, patient_visits.SPEC)}
