"""The constant pools the generator draws from: names, countries, products, campaigns and
the mix of actions. Only the choices among them depend on the seed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Amara",
    "Ana",
    "Andrei",
    "Anika",
    "Ben",
    "Carla",
    "Chen",
    "Chloe",
    "Daniel",
    "Diego",
    "Elena",
    "Emma",
    "Fatima",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jack",
    "James",
    "Jana",
    "Julia",
    "Kai",
    "Kenji",
    "Laura",
    "Leo",
    "Lina",
    "Lucas",
    "Maya",
    "Mateo",
    "Mia",
    "Mohammed",
    "Nadia",
    "Noah",
    "Olga",
    "Omar",
    "Paula",
    "Priya",
    "Rafael",
    "Rosa",
    "Sam",
    "Sara",
    "Sofia",
    "Tom",
    "Yara",
    "Zoe",
]
LAST_NAMES = [
    "Abe",
    "Adeyemi",
    "Alvarez",
    "Becker",
    "Brown",
    "Chen",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Gupta",
    "Hansen",
    "Ito",
    "Jansen",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Nakamura",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Perez",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Sousa",
    "Suzuki",
    "Tanaka",
    "Taylor",
    "Thomas",
    "Torres",
    "Tran",
    "Wagner",
    "Walker",
    "Weber",
    "Williams",
    "Wilson",
    "Wong",
    "Yilmaz",
    "Young",
    "Zhang",
]
MAIL_DOMAINS = (
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "hotmail.com",
    "proton.me",
    "gmx.de",
    "web.de",
    "orange.fr",
    "mail.com",
)
COMPANY_WORDS = [
    "Acme",
    "Blue",
    "Bright",
    "Cloud",
    "Delta",
    "Echo",
    "Forge",
    "Green",
    "Harbor",
    "Iron",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "North",
    "Orbit",
    "Pixel",
    "Quartz",
    "River",
    "Summit",
    "Tidal",
    "Union",
    "Vertex",
    "Willow",
    "Zenith",
]
COMPANY_SUFFIXES = ("Labs", "Systems", "Analytics", "Studio", "Works", "Health", "Logistics")


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    weight: int
    timezones: tuple[str, ...]
    locale: str
    currency: str
    phone_prefixes: tuple[str, ...]  # E.164 prefixes that make valid mobile numbers
    phone_digits: int  # subscriber digits after the prefix


COUNTRIES = (
    Country(
        "US",
        34,
        ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
        "en-US",
        "USD",
        ("+1415", "+1212", "+1312", "+1617", "+1206", "+1512", "+1303", "+1646"),
        7,
    ),
    Country("GB", 10, ("Europe/London",), "en-GB", "GBP", ("+4478",), 8),
    Country("DE", 10, ("Europe/Berlin",), "de-DE", "EUR", ("+49151", "+49160", "+49176"), 8),
    Country("FR", 7, ("Europe/Paris",), "fr-FR", "EUR", ("+3361", "+3366", "+3367"), 7),
    Country("ES", 4, ("Europe/Madrid",), "es-ES", "EUR", ("+346",), 8),
    Country("BR", 8, ("America/Sao_Paulo",), "pt-BR", "BRL", ("+55119", "+55219"), 8),
    Country("IN", 9, ("Asia/Kolkata",), "en-IN", "INR", ("+9198", "+9199", "+9197"), 8),
    Country("CA", 5, ("America/Toronto", "America/Vancouver"), "en-CA", "CAD", ("+1416",), 7),
    Country("AU", 4, ("Australia/Sydney", "Australia/Melbourne"), "en-AU", "AUD", ("+6140",), 7),
    Country("MX", 4, ("America/Mexico_City",), "es-MX", "MXN", ("+5255", "+5233"), 8),
    Country("JP", 5, ("Asia/Tokyo",), "ja-JP", "JPY", ("+81901", "+81908", "+81909"), 7),
)
COUNTRY_CUM = tuple(itertools.accumulate(c.weight for c in COUNTRIES))

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
)

SAAS_HOST = "https://app.example-saas.com"
SHOP_HOST = "https://shop.example-store.com"
SAAS_MARKETING = (
    ("/", "Example SaaS: analytics for busy teams"),
    ("/pricing", "Pricing"),
    ("/features", "Features"),
    ("/customers", "Customers"),
    ("/blog/weekly-reporting", "How we automated weekly reporting"),
    ("/blog/dashboards-that-work", "Dashboards that work"),
    ("/signup", "Sign up"),
)
SAAS_APP = (
    ("/app", "Home"),
    ("/app/dashboards", "Dashboards"),
    ("/app/reports", "Reports"),
    ("/app/settings", "Settings"),
    ("/app/billing", "Billing"),
    ("/app/integrations", "Integrations"),
    ("/docs/getting-started", "Getting started"),
)
SHOP_PAGES = (
    ("/", "Example Store"),
    ("/collections/new", "New arrivals"),
    ("/collections/sale", "Sale"),
    ("/cart", "Cart"),
    ("/account", "Your account"),
    ("/pages/returns", "Returns"),
)
REFERRERS = (
    "",
    "",
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://t.co/",
    "https://www.linkedin.com/",
    "https://news.ycombinator.com/",
)
FEATURES = (
    "dashboard_created",
    "report_exported",
    "integration_connected",
    "alert_configured",
    "teammate_invited",
    "api_token_created",
    "automation_run",
    "search_used",
    "csv_imported",
    "sso_enabled",
)
# (plan, weight, monthly price in USD)
PLANS = (("free", 50, 0.0), ("starter", 25, 19.0), ("pro", 18, 49.0), ("business", 7, 199.0))
PLAN_CUM = tuple(itertools.accumulate(p[1] for p in PLANS))

_ADJECTIVES = [
    "Linen",
    "Wool",
    "Cotton",
    "Leather",
    "Ceramic",
    "Oak",
    "Steel",
    "Bamboo",
    "Canvas",
    "Velvet",
]
_NOUNS = (
    ("Shirt", "apparel", 39.0),
    ("Sweater", "apparel", 79.0),
    ("Jacket", "apparel", 149.0),
    ("Tote Bag", "accessories", 29.0),
    ("Wallet", "accessories", 49.0),
    ("Mug", "home", 18.0),
    ("Lamp", "home", 89.0),
    ("Chair", "furniture", 229.0),
    ("Desk", "furniture", 399.0),
    ("Notebook", "stationery", 12.0),
    ("Backpack", "accessories", 119.0),
    ("Sneakers", "shoes", 99.0),
)
PRODUCTS = tuple(
    (f"SKU-{n:05d}", f"{adj} {noun}", category, round(price * (0.8 + 0.05 * (n % 9)), 2))
    for n, (adj, (noun, category, price)) in enumerate(itertools.product(_ADJECTIVES, _NOUNS))
)
CAMPAIGNS = tuple(
    (f"cmp_{n:03d}", subject)
    for n, subject in enumerate(
        (
            "Welcome aboard",
            "Your first dashboard in 5 minutes",
            "Tips for your first week",
            "Your weekly summary",
            "New: scheduled reports",
            "We miss you",
            "Your cart is waiting",
            "Back in stock",
            "Thanks for your order",
            "How did we do?",
            "Your renewal is coming up",
            "Payment failed: please update your card",
            "Spring sale: 20% off",
            "You have reward points to use",
        )
    )
)
EMAIL_FEEDBACK = (
    ("Email Delivered", 50),
    ("Email Opened", 30),
    ("Email Link Clicked", 13),
    ("Email Bounced", 2),
    ("Unsubscribed", 1.5),
    ("Email Marked as Spam", 0.3),
)
EMAIL_FEEDBACK_CUM = tuple(itertools.accumulate(w for _, w in EMAIL_FEEDBACK))
SMS_FEEDBACK = (("SMS Delivered", 70), ("SMS Link Clicked", 20), ("SMS Replied", 10))
SMS_FEEDBACK_CUM = tuple(itertools.accumulate(w for _, w in SMS_FEEDBACK))
SMS_REPLIES = ("Y", "YES", "thanks", "STOP", "HELP", "when does it ship?")

# What an identified contact does after its first steps, per product (kind, weight).
SAAS_MIX = (
    ("page", 24),
    ("login", 18),
    ("feature", 24),
    ("email", 20),
    ("sms", 3),
    ("renewal", 3),
    ("payment_failed", 0.8),
    ("identify", 2),
)
SHOP_MIX = (
    ("page", 14),
    ("product_viewed", 28),
    ("product_added", 12),
    ("checkout_started", 4),
    ("order", 7),
    ("email", 22),
    ("sms", 5),
    ("identify", 2),
    ("refund", 0.5),
    ("payment_failed", 0.5),
)
SAAS_KINDS = tuple(k for k, _ in SAAS_MIX)
SAAS_CUM = tuple(itertools.accumulate(w for _, w in SAAS_MIX))
SHOP_KINDS = tuple(k for k, _ in SHOP_MIX)
SHOP_CUM = tuple(itertools.accumulate(w for _, w in SHOP_MIX))

UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant
LIB_JS = ("analytics.js", "5.2.0")
LIB_SERVER = ("analytics-python", "2.3.3")
