"""Word lists shared by the corpus generator and the gold reward.

The corpus is made of short reviews of places and things ("we stayed at the hotel for a week .
the staff were friendly and the rooms were clean ."). Its quality dimension is *sentiment*:
a review's evaluative words are drawn positive or negative according to a per-text polarity.
The gold reward reads the same lexicon, so the two must stay in this one file.
"""
from __future__ import annotations

# Evaluative adjectives: what the gold reward counts. Disjoint from every other list.
POSITIVE = (
    "great", "good", "lovely", "friendly", "clean", "fresh", "tasty", "delicious", "excellent",
    "wonderful", "amazing", "pleasant", "helpful", "comfortable", "beautiful", "charming",
    "perfect", "bright", "quiet", "cozy", "fantastic", "superb", "warm", "generous", "fair",
    "smooth", "fun", "relaxing", "polite", "spotless", "stunning", "brilliant", "nice", "kind",
)
NEGATIVE = (
    "bad", "awful", "terrible", "rude", "dirty", "stale", "bland", "poor", "horrible", "noisy",
    "cold", "slow", "unpleasant", "uncomfortable", "ugly", "boring", "broken", "crowded",
    "greasy", "overpriced", "dull", "grim", "sticky", "smelly", "disappointing", "messy",
    "unhelpful", "cramped", "dreadful", "weak", "harsh", "sad", "lazy", "mediocre",
)
# Adverbs of degree, neutral for the gold reward.
INTENSIFIERS = ("very", "really", "quite", "so", "pretty", "rather", "truly", "a bit")

# Each topic: (noun used in openings, aspects that evaluative clauses talk about).
TOPICS = {
    "hotel": ("rooms", "staff", "beds", "breakfast", "pool", "lobby", "view", "location", "showers", "prices"),
    "restaurant": ("food", "staff", "service", "portions", "prices", "music", "tables", "desserts", "soup", "wine"),
    "cafe": ("coffee", "cakes", "staff", "seats", "music", "prices", "tea", "pastries", "terrace", "service"),
    "museum": ("exhibits", "guides", "halls", "paintings", "shop", "staff", "lighting", "tickets", "garden", "tour"),
    "park": ("paths", "trees", "benches", "lake", "views", "playground", "grass", "flowers", "toilets", "cafe"),
    "beach": ("sand", "water", "waves", "views", "bars", "showers", "crowds", "sunsets", "parking", "umbrellas"),
    "train": ("seats", "staff", "carriages", "food", "windows", "toilets", "service", "tickets", "wifi", "views"),
    "gym": ("machines", "trainers", "classes", "showers", "staff", "music", "lockers", "prices", "weights", "pool"),
    "cinema": ("film", "seats", "screen", "sound", "snacks", "staff", "tickets", "actors", "story", "music"),
    "bakery": ("bread", "cakes", "staff", "prices", "cookies", "coffee", "pies", "service", "shop", "smell"),
    "library": ("books", "staff", "desks", "lighting", "chairs", "rooms", "wifi", "shelves", "cafe", "garden"),
    "market": ("stalls", "fruit", "vegetables", "prices", "crowds", "sellers", "cheese", "fish", "music", "bread"),
    "zoo": ("animals", "keepers", "paths", "shows", "cafe", "tickets", "lions", "birds", "garden", "toilets"),
    "concert": ("band", "music", "sound", "crowd", "songs", "lights", "tickets", "drinks", "venue", "singer"),
    "school": ("teachers", "classes", "rooms", "lessons", "books", "food", "staff", "garden", "desks", "library"),
    "shop": ("staff", "prices", "shelves", "clothes", "service", "music", "lighting", "queues", "shoes", "bags"),
}
PEOPLE = ("my friend", "my sister", "my brother", "my family", "my partner", "my mother", "my father",
          "my friends", "my colleagues", "my kids", "my aunt", "my uncle")
TIMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "the weekend",
         "the holidays", "a rainy day", "a sunny day", "my birthday")
DURATIONS = ("a night", "two nights", "a week", "an hour", "two hours", "the afternoon", "the evening",
             "the morning", "a day", "three days")
PLACES = ("the station", "the river", "the old town", "the harbour", "the square", "the bridge",
          "the castle", "the hills", "the centre", "the church")
VERBS_VISIT = ("visited", "tried", "went to", "stopped at", "checked out", "spent time at")
# Neutral filler clauses: informative but carry no sentiment.
FILLERS = (
    "it is close to {place}", "we went there on {time}", "it was busy at lunch", "we paid by card",
    "we arrived by bus", "it opens at nine", "there is a car park next door", "we sat near the window",
    "it is a short walk from {place}", "we booked a week ahead", "the {aspect} are on the first floor",
    "we came back on {time}", "it was our first visit", "they also sell gifts",
)
# Recommendation endings, chosen by the sign of the text's polarity.
ENDINGS_POS = ("i would go back", "we will return soon", "highly recommended", "i would recommend it to {people}",
               "we had a great time", "worth every penny")
ENDINGS_NEG = ("i would not go back", "we will not return", "not recommended", "i would warn {people}",
               "we had a bad time", "a waste of money")

FUNCTION_WORDS = frozenset(
    ["the", "a", "an", "and", "but", "or", "so", "was", "were", "is", "are", "it", "its", "they", "we", "i", "my", "our", "there", "to", "of", "at", "in", "on", "for", "with", "by", "from", "near", "next", "also", "not", "would", "will", "had", "have", "has", "be", "been", "this", "that", "very", "really", "quite"]
)

POSITIVE_SET = frozenset(POSITIVE)
NEGATIVE_SET = frozenset(NEGATIVE)
