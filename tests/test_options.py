"""Caption options as people type them, and answers about bad ones short enough for any chat to send."""

from __future__ import annotations

import pytest

from bot.options import parse_caption
from storage.inputs import InputError, quoted
from storage.jobs import JobParams, NewJob
from storage.limits import parse_limit
from storage.lora_catalog import unknown_lora
from storage.request_checks import check_request
from storage.settings import Settings

DISCORD_MESSAGE_LIMIT = 2000  # Telegram's is 4096
LONG = "a" * 3000
INVISIBLE = "\u200b" * 1000  # repr spells each out in six characters


@pytest.mark.parametrize("caption", ["a cat --Seconds 5 --SEED 3", "a cat --SECONDS 5 --Seed 3"])
def test_options_are_read_whatever_their_case(caption):
    request = parse_caption(caption)
    assert (request.prompt, request.seconds, request.seed) == ("a cat", 5.0, 3)


@pytest.mark.parametrize("dash", ["\u2014", "\u2013"])  # the em and en dashes phone keyboards make of "--"
def test_a_dash_a_phone_made_of_two_hyphens_still_starts_an_option(dash):
    request = parse_caption(f"a cat {dash}seconds 5 {dash}F1 {dash}end-strength 0.5")
    assert (request.prompt, request.seconds, request.variant, request.end_strength) == ("a cat", 5.0, "f1", 0.5)


@pytest.mark.parametrize("caption", ["a knock \u2014at the door", "sunset \u2014end of the day",
                                     "the man\u2014seconds later", "a cat \u2014 seconds later", "waves \u2014endless"])
def test_a_dash_in_the_prose_stays_in_the_prompt(caption):
    request = parse_caption(caption)
    assert request.prompt == caption and request.seconds is None and not request.end and not request.keyframe_at


def test_an_unknown_option_still_is_one_in_any_case():
    with pytest.raises(InputError, match="Unknown option '--Colour'"):
        parse_caption("a cat --Colour red")


@pytest.mark.parametrize("caption", [f"a cat --x{LONG}", f"a cat --cfg {LONG}", f"a cat --seconds {INVISIBLE}",
                                     f"a cat --at {LONG}", f"a cat --lora {LONG}:{LONG}", f"a cat --{LONG}"])
def test_an_answer_about_a_bad_option_quotes_it_clipped(caption):
    with pytest.raises(InputError) as refused:
        parse_caption(caption)
    assert len(str(refused.value)) < 400


@pytest.mark.parametrize(("name", "raw"), [("max_seconds", LONG), ("max_seconds", INVISIBLE), ("loop", LONG),
                                           ("allowed_variants", LONG), (LONG, "5")])
def test_an_answer_about_a_bad_limit_quotes_it_clipped(name, raw):
    with pytest.raises(InputError) as refused:
        parse_limit(name, raw)
    assert len(str(refused.value)) < 400


def test_an_answer_about_an_unknown_variant_quotes_it_clipped():
    job = NewJob("telegram", "c", "u", "a cat", JobParams(seconds=1.0, steps=2, variant="f1" * 2000))
    with pytest.raises(InputError, match="Unknown variant") as refused:
        settings = Settings()
        check_request(job, settings.starting_limits(), settings)
    assert len(str(refused.value)) < 400


def test_quoted_keeps_short_text_whole_and_marks_a_cut():
    assert quoted("ten") == "'ten'"
    assert quoted("x" * 50) == repr("x" * 40 + "…")
    assert len(quoted(INVISIBLE)) < 300


@pytest.mark.parametrize("caption", ["--seconds 5 a cat", "a cat --f1 dancing"])
def test_prose_among_the_options_is_answered_with_the_order_they_take(caption):
    with pytest.raises(InputError, match="is not an option: write the prompt first and the options after it"):
        parse_caption(caption)


def test_a_negative_prompt_with_control_characters_is_refused_like_a_prompt():
    settings = Settings()
    job = NewJob("telegram", "c", "u", "a cat", JobParams(seconds=1.0, steps=2, cfg=3.0, negative_prompt="blur\x07"))
    with pytest.raises(InputError, match="negative prompt contains invisible control characters"):
        check_request(job, settings.starting_limits(), settings)


def test_the_answer_about_an_unknown_lora_fits_a_message_whatever_the_file_names():
    names = [f"style_{i}_" + "x" * 240 for i in range(30)]
    answer = unknown_lora("nope", names)
    assert len(answer) < DISCORD_MESSAGE_LIMIT and "style_19_" in answer and "and 10 more" in answer


@pytest.mark.parametrize(("end", "loop", "refused"), [(False, False, True), (True, False, False),
                                                      (False, True, False)])
def test_an_end_strength_without_an_end_picture_or_loop_is_refused(end, loop, refused):
    from storage.jobs import GuidePictures

    settings = Settings()
    params = JobParams(seconds=2.0, steps=2, end_strength=0.5, loop=loop)
    job = NewJob("discord", "c", "u", "a cat", params, guides=GuidePictures(end=end))
    if refused:
        with pytest.raises(InputError, match="An end strength needs an end picture"):
            check_request(job, settings.starting_limits(), settings)
    else:
        check_request(job, settings.starting_limits(), settings)


def test_defaults_the_admins_lowered_a_limit_under_give_way_to_it():
    import dataclasses

    from bot.options import job_params

    settings = Settings(default_seconds=5.0, default_steps=25)
    limits = dataclasses.replace(settings.starting_limits(), max_seconds=3.0, max_steps=10, allowed_variants=("f1",))
    plain = job_params(parse_caption("a cat"), settings, 10**7, limits=limits)
    assert (plain.seconds, plain.steps, plain.variant) == (3.0, 10, "f1")
    job = NewJob("telegram", "c", "u", "a cat", plain)
    check_request(job, limits, settings)  # the plain request passes the lowered limits
    asked = job_params(parse_caption("a cat --seconds 4 --steps 12 --original"), settings, 10**7, limits=limits)
    assert (asked.seconds, asked.steps, asked.variant) == (4.0, 12, "original")  # still refused, with the reason
    untouched = job_params(parse_caption("a cat"), settings, 10**7, limits=settings.starting_limits())
    assert (untouched.seconds, untouched.steps, untouched.variant) == (5.0, 25, "original")
