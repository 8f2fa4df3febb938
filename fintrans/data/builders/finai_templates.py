"""Seeded generator of bank annual-report sentences, for a synthetic stand-in of FinAI-BERT's task.

FinAI-BERT (arXiv 2507.01991) labels sentences of US bank annual reports as disclosing AI use or not.
No labelled text ships in any wheel, so sentences are written from templates:
  * 'ai_disclosure' (label 1): the bank uses, pilots, governs or reports risks of AI / ML / NLP /
    chatbots / generative AI;
  * 'plain' (label 0): ordinary financial-report sentences (income, credit, capital, branches);
  * 'hard_negative' (label 0): technology without AI (cloud, mobile, cyber), "model" in the credit-risk
    or business sense, and "learning", "intelligence", "automated", "assistant" in non-AI senses. Some
    mirror an AI template word for word except for the technology.
Template syntax: {slot} draws from SLOTS or NUMBERS; {S}/{s}/{Our}/{our} are the sentence's subject
(capitalised / mid-sentence / possessive); {v:verb} conjugates `verb` for that subject.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable

from fintrans.data.tokenizers import word_join, word_split

LABEL_NAMES = ("not_ai", "ai_disclosure")
# The hard generator's kinds follow the easy one's, so the easy records keep their kind ids.
KINDS = ("ai_disclosure", "plain", "hard_negative", "distractor", "implicit_disclosure")

SUBJECTS = (
    dict(S="We", s="we", Our="Our", our="our", plural=True),
    dict(S="The Bank", s="the Bank", Our="The Bank's", our="its", plural=False),
    dict(S="The Company", s="the Company", Our="The Company's", our="its", plural=False),
    dict(S="The Corporation", s="the Corporation", Our="The Corporation's", our="its", plural=False),
)
VERBS = {  # plural/base form -> third person singular
    "use": "uses", "have": "has", "continue": "continues", "expect": "expects", "partner": "partners",
    "apply": "applies", "be": "is", "maintain": "maintains", "operate": "operates", "rely": "relies",
    "plan": "plans", "offer": "offers", "evaluate": "evaluates", "monitor": "monitors",
    # (used by finai_hard_templates)
    "do": "does", "expand": "expands", "hire": "hires", "test": "tests", "face": "faces", "provide": "provides",
}
_BE_PLURAL = "are"

SLOTS: dict[str, tuple[str, ...]] = {
    # --- AI ---
    "ai_tech": (
        "artificial intelligence", "machine learning", "machine learning models", "natural language processing",
        "generative AI", "generative artificial intelligence tools", "large language models", "deep learning",
        "neural networks", "AI-based analytics", "AI-driven decisioning tools", "computer vision",
        "conversational AI", "intelligent automation powered by machine learning",
        "speech recognition based on artificial intelligence", "AI",
        "predictive analytics built on machine learning",
    ),
    "ai_core": (
        "natural language processing", "machine learning", "artificial intelligence", "conversational AI",
        "large language models", "generative AI",
    ),
    "ai_task": (
        "detect fraudulent card transactions", "improve anti-money laundering monitoring",
        "automate the review of commercial loan documents", "enhance credit underwriting decisions",
        "answer routine customer inquiries", "personalize product recommendations", "identify suspicious activity",
        "streamline mortgage processing", "forecast deposit flows", "route calls in our contact centers",
        "extract data from loan agreements", "support our financial advisors", "flag potential cyber threats",
        "summarize regulatory documents", "prioritize collections outreach", "draft responses to customer emails",
    ),
    "ai_product": (
        "virtual assistant", "AI-powered chatbot", "digital assistant", "intelligent virtual agent", "chatbot",
        "conversational banking assistant",
    ),
    "ai_product_article": (
        "a virtual assistant", "an AI-powered chatbot", "a digital assistant", "an intelligent virtual agent",
        "a chatbot", "a generative AI assistant for employees",
    ),
    "ai_gov": (
        "an AI governance committee", "an artificial intelligence governance framework", "a responsible AI policy",
        "a machine learning model risk standard", "an enterprise AI council",
    ),
    "ai_risk": (
        "biased outcomes from machine learning models", "inaccurate outputs from generative AI tools",
        "the misuse of artificial intelligence by fraudsters", "errors in AI-driven credit decisions",
        "the use of deepfakes generated with artificial intelligence",
    ),
    "ai_model_kind": (
        "machine learning models", "AI models", "neural network models", "natural language processing models",
    ),
    # --- business ---
    "business_area": (
        "consumer lending", "commercial banking", "wealth management", "treasury services", "retail branches",
        "card services", "mortgage operations", "compliance", "small business banking",
    ),
    "kpi": (
        "operational efficiency", "fraud loss rates", "customer satisfaction", "the speed of credit decisions",
        "the accuracy of our forecasts", "response times for customer inquiries",
    ),
    "direction": (
        "increased", "decreased", "grew", "declined", "rose", "fell",
    ),
    "nii_driver": (
        "higher loan balances", "higher deposit costs", "lower yields on securities", "the rise in market rates",
        "growth in commercial loans", "lower average earning assets",
    ),
    "expense_item": (
        "salaries and benefits", "occupancy costs", "professional fees", "FDIC insurance premiums",
        "marketing expenses", "technology and equipment costs", "legal expenses",
    ),
    "region": (
        "the Southeast", "the Midwest", "Texas", "New England", "California", "the Mid-Atlantic region",
        "Pennsylvania and Ohio", "the Pacific Northwest", "Florida",
    ),
    "regulator": (
        "Federal Reserve", "Office of the Comptroller of the Currency", "Federal Deposit Insurance Corporation",
        "Consumer Financial Protection Bureau", "state banking department",
    ),
    "loan_type": (
        "Commercial real estate", "Residential mortgage", "Commercial and industrial", "Consumer", "Home equity",
        "Construction", "Agricultural",
    ),
    "mortgage_driver": (
        "lower refinancing activity", "higher origination volumes",
        "changes in the fair value of mortgage servicing rights", "narrower gain on sale margins",
    ),
    "target_bank": (
        "First Community Bancorp", "Heritage Savings Bank", "Valley National Trust", "Summit Financial Group",
        "Lakeside Bancshares", "Pioneer State Bank",
    ),
    # --- technology and words without AI (hard negatives) ---
    "plain_tech": (
        "cloud computing", "cloud-based data platforms", "mobile banking applications", "cybersecurity tools",
        "a new core banking system", "application programming interfaces", "real-time payment infrastructure",
        "a modern data warehouse", "multifactor authentication", "electronic signatures",
        "electronic document management", "online account opening",
    ),
    "plain_task": (
        "process card transactions in real time", "reduce the cost of our data centers", "protect customer data",
        "shorten account opening times", "connect with fintech partners", "settle payments faster",
        "store loan documents electronically", "improve system resiliency", "detect unauthorized logins",
        "serve customers outside our branch footprint",
    ),
    "credit_model": (
        "discounted cash flow", "probability of default", "loss given default", "econometric", "vintage loss",
        "regression-based", "roll rate",
    ),
    "macro_var": (
        "unemployment", "home price", "gross domestic product", "interest rate", "commercial real estate price",
    ),
    "model_use": (
        "credit loss estimation", "capital planning", "asset liability management", "loan pricing",
        "deposit forecasting",
    ),
    "vendor_service": (
        "data processing and information technology services", "card processing", "core deposit systems",
        "check imaging", "cloud hosting",
    ),
    "cyber_threat": (
        "ransomware and phishing", "denial of service attacks", "malware", "social engineering schemes",
        "account takeover attempts",
    ),
    "kpi_plain": (
        "loan growth", "deposit costs", "branch productivity", "expense trends", "credit quality",
    ),
    "department": (
        "treasury management", "commercial payments", "branch operations", "loan servicing",
    ),
}

NUMBERS: dict[str, Callable[[random.Random, dict], str]] = {
    "year": lambda r, c: str(c["year"]),
    "prev_year": lambda r, c: str(c["year"] - 1),
    "pct": lambda r, c: str(r.randint(2, 45)),
    "pct_dec": lambda r, c: f"{r.randint(45, 75)}.{r.randint(0, 9)}",
    "cet1": lambda r, c: f"{r.randint(9, 14)}.{r.randint(0, 9)}",
    "nim": lambda r, c: f"{r.randint(2, 3)}.{r.randint(10, 99)}",
    "nim2": lambda r, c: f"{r.randint(2, 3)}.{r.randint(10, 99)}",
    "loss_rate": lambda r, c: f"0.{r.randint(5, 95):02d}",
    "loss_rate2": lambda r, c: f"0.{r.randint(5, 95):02d}",
    "amount": lambda r, c: str(r.randint(12, 980)),
    "amount2": lambda r, c: str(r.randint(12, 980)),
    "amount_dec": lambda r, c: f"{r.randint(1, 90)}.{r.randint(1, 9)}",
    "count": lambda r, c: str(r.randint(12, 950)),
    "small": lambda r, c: str(r.randint(2, 9)),
    "cents": lambda r, c: f"0.{r.randint(10, 95)}",
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "ai_disclosure": (
        "In {year}, {s} deployed {ai_tech} to {ai_task}.",
        "{S} {v:use} {ai_tech} to {ai_task}.",
        "{Our} {ai_product}, powered by {ai_core}, handled {amount_dec} million customer conversations in {year}.",
        "{S} {v:continue} to invest in {ai_tech} capabilities designed to {ai_task}.",
        "During {year}, {s} expanded {our} use of {ai_tech} across {business_area}.",
        "{S} {v:have} established {ai_gov} to oversee the development and use of artificial intelligence.",
        "{S} {v:partner} with a financial technology company that applies {ai_tech} to {ai_task}.",
        "{S} {v:expect} {ai_tech} to improve {kpi} over the next {small} years.",
        "Risks related to artificial intelligence, including {ai_risk}, could adversely affect our business and "
        "reputation.",
        "{S} piloted {ai_product_article} that uses {ai_core} to {ai_task}.",
        "Our fraud detection platform uses {ai_tech} that learns from historical transaction patterns.",
        "The use of {ai_tech} in {business_area} reduced manual processing time by {pct}% in {year}.",
        "{S} {v:be} exploring how generative AI can help {ai_task}.",
        "Approximately {pct}% of customer service requests were resolved by our {ai_product} without human "
        "intervention.",
        "{S} hired {count} data scientists to build {ai_tech} solutions for {business_area}.",
        "{S} {v:apply} {ai_tech} to analyze unstructured data, such as customer emails and call transcripts.",
        "Model risk management now includes the validation of {ai_model_kind} used to {ai_task}.",
        "Investments in {ai_tech} enabled {s} to {ai_task} more efficiently.",
        "{S} launched {ai_product_article} in {year} that answers questions about balances, transfers and card "
        "activity.",
        "{Our} {ai_product} uses {ai_core} to understand customer requests in {small} languages.",
        "{S} {v:evaluate} {ai_model_kind} for fairness and explainability before they are used to {ai_task}.",
    ),
    "plain": (
        "Net interest income {direction} ${amount} million, or {pct}%, in {year} compared with {prev_year}, driven "
        "by {nii_driver}.",
        "The provision for credit losses was ${amount} million in {year}, compared with ${amount2} million in "
        "{prev_year}.",
        "Total deposits {direction} {pct}% to ${amount_dec} billion at December 31, {year}.",
        "Noninterest expense {direction} ${amount} million, primarily due to {expense_item}.",
        "The common equity Tier 1 capital ratio was {cet1}% at December 31, {year}.",
        "{S} declared quarterly cash dividends of ${cents} per common share in {year}.",
        "Nonperforming assets totaled ${amount} million, or {loss_rate}% of total assets, at year end.",
        "{Our} branch network consists of {count} banking offices located in {region}.",
        "{S} {v:be} subject to regulation and supervision by the {regulator}.",
        "{loan_type} loans represented {pct}% of total loans at December 31, {year}.",
        "Net charge-offs were {loss_rate}% of average loans in {year}, compared with {loss_rate2}% in {prev_year}.",
        "{S} repurchased {amount_dec} million shares of common stock during {year}.",
        "Mortgage banking income {direction} in {year} due to {mortgage_driver}.",
        "The efficiency ratio improved to {pct_dec}% in {year}.",
        "{S} completed the acquisition of {target_bank}, adding ${amount_dec} billion in assets.",
        "Wealth management fees {direction} {pct}% as assets under management reached ${amount_dec} billion.",
        "The net interest margin was {nim}% for {year}, compared with {nim2}% for {prev_year}.",
        "{S} {v:maintain} a diversified loan portfolio across {region}.",
        "Liquidity is managed through deposits, borrowings and holdings of investment securities of ${amount_dec} "
        "billion.",
    ),
    "hard_negative": (
        "{S} {v:continue} to invest in {plain_tech} to modernize {our} digital banking platform.",
        "In {year}, {s} deployed {plain_tech} to {plain_task}.",
        "{S} {v:use} {plain_tech} to {plain_task}.",
        "The allowance for credit losses is estimated using {credit_model} models that incorporate {macro_var} "
        "forecasts.",
        "Model risk management includes independent validation of the {credit_model} models used in {model_use}.",
        "Interest rate risk is measured with a simulation model that projects net interest income under {small} "
        "rate scenarios.",
        "Our employee learning and development programs provided {count} thousand hours of training in {year}.",
        "{S} {v:operate} {count} automated teller machines across {region}.",
        "Market intelligence and customer research inform our pricing of deposit products in {region}.",
        "{S} {v:rely} on third-party vendors for {vendor_service}.",
        "Cyber attacks, including {cyber_threat}, could disrupt our operations and damage our reputation.",
        "Customers can deposit checks, pay bills and transfer funds through our mobile banking app.",
        "An assistant vice president of {department} oversees the team that serves clients in {region}.",
        "Digital banking adoption increased, with {pct}% of deposits made through digital channels in {year}.",
        "Stress testing relies on scenario models that project losses under severe {macro_var} shocks.",
        "The {credit_model} model is sensitive to assumptions about {macro_var} trends.",
        "{S} migrated {our} core banking system to the cloud in {year} to improve resiliency.",
        "Automated underwriting rules approved {pct}% of small business applications in {year}.",
        "Our data analytics team produces dashboards that help managers track {kpi_plain}.",
        "{Our} business model focuses on relationship banking for commercial clients in {region}.",
        "{S} {v:plan} to expand {plain_tech} to {plain_task}.",
        "Our financial model assumes that deposit costs decline gradually over the next {small} quarters.",
    ),
}
SLOT_RE = re.compile(r"\{(\w+)(?::(\w+))?\}")


@dataclasses.dataclass(frozen=True)
class Sentence:
    text: str
    label: int  # 1 = AI disclosure
    kind: str  # one of KINDS
    group: str = ""  # the template group it was written from ('kind/index'; hard generator only)


def _conjugate(verb: str, subject: dict) -> str:
    if subject["plural"]:
        return _BE_PLURAL if verb == "be" else verb
    return VERBS[verb]


def fill(template: str, rng: random.Random, slots: dict[str, tuple[str, ...]] = SLOTS) -> str:
    """One sentence from `template`: a random subject and year, slots drawn from `slots`."""
    subject = rng.choice(SUBJECTS)
    context = {"year": rng.randint(2016, 2024)}

    def replace(m: re.Match) -> str:
        slot, arg = m.group(1), m.group(2)
        if slot == "v":
            return _conjugate(arg, subject)
        if slot in ("S", "s", "Our", "our"):
            return subject[slot]
        if slot in NUMBERS:
            return NUMBERS[slot](rng, context)
        return rng.choice(slots[slot])

    text = SLOT_RE.sub(replace, template)
    text = text[:1].upper() + text[1:]  # a template may open with a lower-case slot value
    # Re-join through the tokenizer so that text == decode(encode(text)) exactly.
    return word_join(word_split(text))


def generate(num_per_class: int, seed: int) -> list[Sentence]:
    """num_per_class unique AI sentences and as many unique non-AI ones (half hard negatives)."""
    rng = random.Random(seed)
    wanted = {"ai_disclosure": num_per_class, "hard_negative": num_per_class // 2,
              "plain": num_per_class - num_per_class // 2}
    seen: set[str] = set()
    out: list[Sentence] = []
    for kind, count in wanted.items():
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise RuntimeError(f"templates of kind {kind!r} cannot make {count} unique sentences")
            text = fill(rng.choice(TEMPLATES[kind]), rng)
            if text not in seen:
                seen.add(text)
                out.append(Sentence(text, int(kind == "ai_disclosure"), kind))
                made += 1
    return out


def vocabulary_texts() -> list[str]:
    """Every word the generator can write (template text, slot values, subjects, verb forms)."""
    texts = [SLOT_RE.sub(" ", t) for ts in TEMPLATES.values() for t in ts]
    texts += [v for values in SLOTS.values() for v in values]
    texts += [s[k] for s in SUBJECTS for k in ("S", "s", "Our", "our")]
    texts += list(VERBS) + list(VERBS.values()) + [_BE_PLURAL, "$", "%", ".", ","]
    return texts
