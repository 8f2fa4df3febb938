"""The hard FinAI sentence generator: paraphrase groups, distractors, keyword-free disclosures.

The easy generator (finai_templates.generate) writes each class from its own templates, so a few
keywords separate them and a small BERT reaches 100% test accuracy. This one is built so that words
alone do not decide the label:
  * 'ai_disclosure' (1): the bank uses, pilots, governs or reports risks of AI, in many phrasings;
  * 'implicit_disclosure' (1): the bank's AI use described without the obvious keywords (no "AI",
    "artificial intelligence", "machine learning", "chatbot", ...): software that learns from past
    transactions, models trained on call transcripts, systems that read and answer customer emails;
  * 'distractor' (0): AI words without the bank disclosing its own use: regulators', competitors' and
    vendors' AI, industry news, negations ("we do not currently use machine learning"), hypotheticals;
  * 'hard_negative' (0): technology, "models", "learning", "trained", "automated", "reads" in non-AI
    senses; 'plain' (0): ordinary annual-report sentences.
Templates come in groups of paraphrases of one statement. Splits are cut by group (every sentence of
a group lies in one split), so a test sentence is never a re-fill or paraphrase of a training one:
what is tested is whether a model learned the distinction, not the templates.
Sizes follow the paper: 1,586 sentences, 793 per class (TOTAL_PER_CLASS), split per class into
SPLIT_PER_CLASS sentences (the test split is the paper's 20%); within a class each kind keeps its
KIND_SHARES in every split.
"""
from __future__ import annotations

import random

from fintrans.data.builders import finai_templates as easy
from fintrans.data.builders.finai_templates import Sentence, fill

TOTAL_PER_CLASS = 793  # the paper: 1,586 sentences, 793 AI and 793 non-AI
SPLIT_PER_CLASS = {"train": 554, "validation": 80, "test": 159}
KIND_SHARES = {1: {"ai_disclosure": 0.6, "implicit_disclosure": 0.4},
               0: {"distractor": 0.4, "hard_negative": 0.3, "plain": 0.3}}
# Each kind's groups are dealt to the splits in these shares (at least one group each).
GROUP_SHARES = {"test": 0.25, "validation": 0.15}

SLOTS: dict[str, tuple[str, ...]] = {
    **easy.SLOTS,
    "ai_word": (
        "artificial intelligence", "machine learning", "generative AI", "AI", "large language models",
        "natural language processing", "deep learning", "AI-driven analytics", "machine learning models",
    ),
    "competitor": (
        "Several of our larger competitors", "Large national banks", "Fintech lenders", "Some peer institutions",
        "Nonbank competitors", "Technology companies entering payments", "Many community banks",
    ),
    "outsider": (
        "Banking regulators", "The Federal Reserve", "Industry groups", "Policymakers", "Consumer advocates",
        "Rating agencies", "Federal and state regulators",
    ),
    "implicit_tech": (
        "software that learns from historical transactions", "models trained on millions of past payments",
        "systems that read and interpret customer emails", "algorithms that improve as they process more data",
        "tools that draft written responses for our employees", "self-learning pattern recognition software",
        "software that understands spoken customer requests", "models trained on years of call transcripts",
        "programs that teach themselves to spot unusual account activity",
        "systems that learn each customer's typical spending behavior",
    ),
    "implicit_assistant": (
        "a digital agent that answers customer questions in everyday language",
        "a virtual agent that understands written questions from customers",
        "an online helper that converses with customers and learns from each conversation",
        "software that holds text conversations with customers about their accounts",
    ),
    "rule_tech": (
        "rules-based software", "fixed threshold alerts", "a scripted phone menu", "spreadsheet-based tools",
        "manual review checklists", "predefined business rules", "batch reporting software",
    ),
    "trained_staff": (
        "branch employees", "new loan officers", "our compliance staff", "relationship managers",
        "contact center representatives", "our tellers",
    ),
    "training_topic": (
        "fair lending rules", "anti-money laundering procedures", "customer privacy requirements",
        "new deposit products", "cybersecurity awareness", "complaint handling",
    ),
}

# kind -> groups of paraphrases; {slot} as in finai_templates (subjects, {v:verb}, numbers).
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ai_disclosure": (
        ("In {year}, {s} deployed {ai_tech} to {ai_task}.",
         "{S} began using {ai_tech} in {year} to {ai_task}.",
         "Since {year}, {s} {v:have} relied on {ai_tech} to {ai_task}."),
        ("{S} {v:use} {ai_tech} to {ai_task}.",
         "{ai_tech} is used across {business_area} to {ai_task}.",
         "To {ai_task}, {s} {v:rely} on {ai_tech}."),
        ("{S} {v:have} established {ai_gov} to oversee our use of artificial intelligence.",
         "Oversight of our AI use is the responsibility of {ai_gov}.",
         "{ai_gov} reviews every new application of machine learning before it is deployed."),
        ("{S} piloted {ai_product_article} that uses {ai_core} to {ai_task}.",
         "A pilot of {ai_product_article} built on {ai_core} was completed in {year}.",
         "During {year} {s} tested {ai_product_article} with {count} customers."),
        ("Our use of {ai_tech} exposes us to risks, including {ai_risk}.",
         "As {s} {v:expand} {our} use of AI, {s} may face {ai_risk}.",
         "The AI systems {s} {v:operate} could produce {ai_risk}, which could harm our reputation."),
        ("{Our} {ai_product} handled {amount_dec} million customer conversations in {year}.",
         "Customers held {amount_dec} million conversations with our {ai_product} in {year}.",
         "Approximately {pct}% of service requests were resolved by our {ai_product} without human help."),
        ("{S} {v:hire} {count} data scientists to build {ai_tech} for {business_area}.",
         "Our team of {count} data scientists develops {ai_model_kind} for {business_area}.",
         "{S} added {count} machine learning engineers to {our} technology staff in {year}."),
        ("Model risk management now includes the validation of the {ai_model_kind} {s} {v:use} to {ai_task}.",
         "The {ai_model_kind} that {s} {v:use} are validated independently before they are used to {ai_task}.",
         "{S} {v:test} {our} {ai_model_kind} for fairness and explainability."),
        ("{S} {v:be} expanding {our} use of generative AI to help employees {ai_task}.",
         "Employees now use a generative AI assistant to {ai_task}.",
         "{S} rolled out large language models to {count} employees in {year} to {ai_task}."),
        ("The use of {ai_tech} in {business_area} reduced manual processing time by {pct}% in {year}.",
         "{ai_tech} cut the time needed to {ai_task} by {pct}%.",
         "Because of {ai_tech}, {s} can {ai_task} {pct}% faster than before."),
        ("{S} {v:partner} with a fintech company whose {ai_tech} helps us {ai_task}.",
         "Through a partnership signed in {year}, {s} {v:use} a vendor's {ai_tech} to {ai_task}.",
         "A third-party AI platform now helps {s} {ai_task}."),
        ("Investments in {ai_tech} enabled {s} to {ai_task} more efficiently.",
         "{S} invested ${amount} million in {ai_tech} in {year}.",
         "Our technology budget for {year} includes ${amount} million for artificial intelligence projects."),
        ("{S} {v:apply} {ai_core} to analyze customer emails and call transcripts.",
         "Call transcripts are analyzed with {ai_core} to understand why customers contact us.",
         "{ai_core} helps our service teams sort and answer customer emails."),
        ("{S} {v:expect} {our} use of {ai_tech} to improve {kpi} over the next {small} years.",
         "Management believes the AI tools {s} deployed in {year} will improve {kpi}.",
         "{S} {v:be} counting on {ai_tech} to improve {kpi}."),
    ),
    "implicit_disclosure": (
        ("{S} {v:use} {implicit_tech} to {ai_task}.",
         "To {ai_task}, {s} now {v:rely} on {implicit_tech}.",
         "Since {year}, {s} {v:have} used {implicit_tech} to {ai_task}."),
        ("{S} launched {implicit_assistant} in {year}.",
         "Customers can now talk with {implicit_assistant}.",
         "In {year} {s} introduced {implicit_assistant}, which served {count} thousand customers."),
        ("Our fraud platform learns from each confirmed fraud case and adapts to new schemes.",
         "The fraud system {s} {v:operate} adapts itself as it sees new fraud patterns.",
         "Each confirmed fraud case is fed back so that our detection software keeps learning."),
        ("Loan documents are now read by software that extracts key terms without manual keying.",
         "Software now reads incoming loan agreements and pulls out their key terms for {business_area}.",
         "{S} automated the reading of {count} thousand loan documents with software that interprets their text."),
        ("Our underwriting models are retrained every {small} weeks on new repayment data so that they keep "
         "improving.",
         "The credit decision engine {s} {v:use} retrains itself on new repayment data.",
         "Self-updating underwriting models that learn from repayment outcomes now score {pct}% of applications."),
        ("Software that predicts which customers are likely to leave helps our bankers reach them first.",
         "Our bankers receive predictions, learned from past account behavior, of which clients may leave.",
         "Pattern recognition software trained on past closures flags accounts likely to close."),
        ("{S} {v:have} trained models on call recordings to route customers to the right team.",
         "Calls are now routed by a model trained on {count} thousand past call recordings.",
         "A model that listens to the caller's request routes calls in our contact centers."),
        ("Written answers to routine customer emails are now drafted by software and checked by employees.",
         "Employees review replies that our software composes automatically from the customer's message.",
         "Software now writes first drafts of responses to customer emails for {business_area}."),
        ("{S} {v:use} computer models that recognize handwriting and signatures on checks.",
         "Checks are verified by software that has learned to recognize signatures.",
         "Software trained on images of millions of checks now verifies signatures."),
        ("Our new data science platform builds predictive models that learn from customer behavior.",
         "{S} built a platform in {year} where predictive models learn from customer data to {ai_task}.",
         "Predictive models that learn from our customer data now help {s} {ai_task}."),
        ("The system {s} deployed in {year} improves its own accuracy as it processes more transactions.",
         "Our transaction monitoring software becomes more accurate the more payments it reviews.",
         "Alerts are now generated by software that refines its own rules from analysts' decisions."),
        ("{S} {v:use} algorithms that learn from historical data to {ai_task}.",
         "Algorithms trained on historical data help {s} {ai_task}.",
         "{S} {v:be} now able to {ai_task} with algorithms that learn from our historical records."),
    ),
    "distractor": (
        ("{outsider} discussed the risks of {ai_word} in banking during {year}.",
         "In {year}, {outsider} warned about the risks of {ai_word} in financial services.",
         "{outsider} issued guidance on the use of {ai_word} by banks in {year}."),
        ("{S} {v:do} not currently use {ai_word} in credit decisions.",
         "{S} {v:have} not deployed {ai_word} in any customer-facing process.",
         "{S} {v:do} not use {ai_word} to {ai_task}."),
        ("{competitor} use {ai_word} to {ai_task}.",
         "{competitor} have deployed {ai_word} to {ai_task}, which could make it harder for us to compete.",
         "{competitor} that invest heavily in {ai_word} may gain an advantage over us."),
        ("Industry surveys show that banks expect to increase spending on {ai_word}.",
         "According to industry studies, {pct}% of banks plan to invest in {ai_word}.",
         "Analysts expect the banking industry's spending on {ai_word} to grow over the next {small} years."),
        ("If {s} {v:be} unable to keep pace with {ai_word}, {our} competitive position could suffer.",
         "A failure to adopt {ai_word} as quickly as our competitors could hurt our business.",
         "{S} may need to invest in {ai_word} in the future to remain competitive."),
        ("Fraudsters increasingly use {ai_word} to create convincing phishing messages.",
         "Criminals may use {ai_word} to impersonate our customers and employees.",
         "The misuse of {ai_word} by criminals could increase fraud losses across the industry."),
        ("New laws on {ai_word} could increase compliance costs for financial institutions.",
         "Proposed rules would require lenders that use {ai_word} to explain their credit decisions.",
         "{S} {v:monitor} proposed regulation of {ai_word}, which could affect the banking industry."),
        ("{S} {v:have} no current plans to adopt {ai_word}.",
         "{S} {v:evaluate} {ai_word} from time to time but {v:have} made no decision to use it.",
         "No {ai_word} tools are used in our lending or deposit operations."),
        ("A vendor that serves many banks announced a product based on {ai_word} in {year}.",
         "Several of our vendors market {ai_word} products to community banks.",
         "Technology providers continue to promote {ai_word} to financial institutions."),
        ("The hype around {ai_word} has increased the valuations of technology companies.",
         "Stock market gains in {year} were led by companies associated with {ai_word}.",
         "Demand for data centers to run {ai_word} has lifted commercial real estate values in some markets."),
        ("Our deposit customers include technology companies that develop {ai_word}.",
         "{S} {v:provide} loans to businesses that build {ai_word} products.",
         "Commercial deposits grew as clients in the {ai_word} sector raised capital."),
        ("Some customers have asked whether {s} {v:use} {ai_word}; {s} {v:do} not.",
         "Questions about {ai_word} were raised at our annual meeting; the Board noted that the Bank does not use it.",
         "Despite industry interest in {ai_word}, our processes remain entirely manual."),
    ),
    "hard_negative": (
        ("{S} {v:use} {plain_tech} to {plain_task}.",
         "In {year}, {s} deployed {plain_tech} to {plain_task}.",
         "To {plain_task}, {s} {v:rely} on {plain_tech}."),
        ("Our employee learning and development programs provided {count} thousand hours of training in {year}.",
         "{S} trained {trained_staff} on {training_topic} in {year}.",
         "All {trained_staff} completed training on {training_topic}."),
        ("The allowance for credit losses is estimated using {credit_model} models that incorporate {macro_var} "
         "forecasts.",
         "Our {credit_model} models predict credit losses from {macro_var} forecasts.",
         "Loss estimates come from {credit_model} models driven by {macro_var} scenarios."),
        ("Fraud alerts are generated by {rule_tech} that flag transactions above set limits.",
         "{S} {v:use} {rule_tech} to flag unusual wire transfers for manual review.",
         "Suspicious activity is identified with {rule_tech} and reviewed by analysts."),
        ("{S} {v:operate} {count} automated teller machines across {region}.",
         "Customers use our automated phone system to check balances and transfer funds.",
         "Automated clearing house volumes rose {pct}% in {year}."),
        ("Loan documents are scanned and stored electronically for {business_area}.",
         "Employees read and key the terms of every loan agreement into our loan system.",
         "Our staff reviews incoming loan documents and records their key terms by hand."),
        ("Model risk management includes independent validation of the {credit_model} models used in {model_use}.",
         "Every {credit_model} model used in {model_use} is validated annually.",
         "Internal audit reviews the controls over models used for {model_use}."),
        ("Market intelligence and customer research inform our pricing of deposit products in {region}.",
         "{S} {v:use} market intelligence from our bankers to set loan pricing.",
         "Competitive intelligence on deposit rates is gathered weekly by our treasury team."),
        ("Our data analytics team produces dashboards that help managers track {kpi_plain}.",
         "Managers review monthly reports on {kpi_plain} prepared by our finance team.",
         "Business intelligence reports show {kpi_plain} for each region."),
        ("{S} {v:continue} to invest in {plain_tech} to modernize {our} digital banking platform.",
         "Technology spending of ${amount} million in {year} focused on {plain_tech}.",
         "{S} {v:plan} to expand {plain_tech} to {plain_task}."),
        ("Cyber attacks, including {cyber_threat}, could disrupt our operations and damage our reputation.",
         "{S} {v:face} cyber threats such as {cyber_threat}.",
         "Our systems are regularly targeted by {cyber_threat}."),
        ("An assistant vice president of {department} oversees the team that serves clients in {region}.",
         "Our branch assistants help customers open accounts in {region}.",
         "A team of {count} assistants supports relationship managers in {department}."),
    ),
    "plain": (
        ("Net interest income {direction} ${amount} million, or {pct}%, in {year}, driven by {nii_driver}.",
         "Driven by {nii_driver}, net interest income {direction} {pct}% in {year}.",
         "In {year}, net interest income {direction} to ${amount} million because of {nii_driver}."),
        ("The provision for credit losses was ${amount} million in {year}, compared with ${amount2} million in "
         "{prev_year}.",
         "{S} recorded a provision for credit losses of ${amount} million in {year}."),
        ("Total deposits {direction} {pct}% to ${amount_dec} billion at December 31, {year}.",
         "Deposits ended {year} at ${amount_dec} billion, a change of {pct}% from {prev_year}."),
        ("Noninterest expense {direction} ${amount} million, primarily due to {expense_item}.",
         "The change in noninterest expense reflected {expense_item}."),
        ("The common equity Tier 1 capital ratio was {cet1}% at December 31, {year}.",
         "{S} remained well capitalized, with a CET1 ratio of {cet1}% at year end."),
        ("{S} declared quarterly cash dividends of ${cents} per common share in {year}.",
         "Dividends of ${cents} per share were paid each quarter of {year}."),
        ("Nonperforming assets totaled ${amount} million, or {loss_rate}% of total assets, at year end.",
         "Net charge-offs were {loss_rate}% of average loans in {year}, compared with {loss_rate2}% in "
         "{prev_year}."),
        ("{Our} branch network consists of {count} banking offices located in {region}.",
         "{S} {v:operate} {count} branches in {region}."),
        ("{S} {v:be} subject to regulation and supervision by the {regulator}.",
         "The {regulator} examines {s} regularly."),
        ("{loan_type} loans represented {pct}% of total loans at December 31, {year}.",
         "{S} {v:maintain} a diversified loan portfolio across {region}."),
        ("{S} completed the acquisition of {target_bank}, adding ${amount_dec} billion in assets.",
         "The acquisition of {target_bank} closed in {year}."),
        ("The net interest margin was {nim}% for {year}, compared with {nim2}% for {prev_year}.",
         "The efficiency ratio improved to {pct_dec}% in {year}."),
    ),
}
HARD_KINDS = ("ai_disclosure", "implicit_disclosure", "distractor", "hard_negative", "plain")
LABELS = {"ai_disclosure": 1, "implicit_disclosure": 1, "distractor": 0, "hard_negative": 0, "plain": 0}
# The words an 'implicit_disclosure' must avoid (tests check the templates and slots it draws on).
AI_KEYWORDS = ("ai", "artificial", "intelligence", "machine", "chatbot", "neural", "deep", "generative",
               "language", "nlp", "data science")


def _split_counts(label: int) -> dict[str, dict[str, int]]:
    """split -> kind -> sentences, each split's per-class total spread over the kinds by KIND_SHARES."""
    shares = KIND_SHARES[label]
    out = {}
    for split, n in SPLIT_PER_CLASS.items():
        counts = {k: int(n * s) for k, s in shares.items()}
        for k in sorted(shares, key=lambda k: n * shares[k] - counts[k], reverse=True)[:n - sum(counts.values())]:
            counts[k] += 1  # largest remainders, so the split total is exact
        out[split] = counts
    return out


def group_splits(seed: int) -> dict[str, dict[str, list[int]]]:
    """kind -> split -> the indices of GROUPS[kind] dealt to that split (seeded shuffle)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, list[int]]] = {}
    for kind in HARD_KINDS:
        order = list(range(len(GROUPS[kind])))
        rng.shuffle(order)
        n_test = max(1, round(len(order) * GROUP_SHARES["test"]))
        n_val = max(1, round(len(order) * GROUP_SHARES["validation"]))
        out[kind] = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
                     "train": order[n_test + n_val:]}
    return out


def generate_splits(seed: int) -> dict[str, list[Sentence]]:
    """split -> unique sentences (no text in two splits), sized by SPLIT_PER_CLASS and KIND_SHARES, each
    from its split's template groups only; deterministic in `seed`."""
    rng = random.Random(seed)
    groups = group_splits(seed)
    per_split = {s: {**_split_counts(0)[s], **_split_counts(1)[s]} for s in SPLIT_PER_CLASS}
    seen: set[str] = set()
    out: dict[str, list[Sentence]] = {s: [] for s in SPLIT_PER_CLASS}
    for split in SPLIT_PER_CLASS:
        for kind in HARD_KINDS:
            wanted = per_split[split][kind]
            templates = [(g, t) for g in groups[kind][split] for t in GROUPS[kind][g]]
            made = attempts = 0
            while made < wanted:
                attempts += 1
                if attempts > 200 * wanted + 1000:
                    raise RuntimeError(f"the {split} groups of kind {kind!r} cannot make {wanted} unique sentences")
                g, template = rng.choice(templates)
                text = fill(template, rng, SLOTS)
                if text not in seen:
                    seen.add(text)
                    out[split].append(Sentence(text, LABELS[kind], kind, f"{kind}/{g}"))
                    made += 1
        rng.shuffle(out[split])
    return out


def vocabulary_texts() -> list[str]:
    """Every word this generator can write."""
    texts = [easy.SLOT_RE.sub(" ", t) for groups in GROUPS.values() for g in groups for t in g]
    values = [v for values in SLOTS.values() for v in values]
    return texts + values + [v[:1].upper() + v[1:] for v in values]  # a slot may open the sentence
