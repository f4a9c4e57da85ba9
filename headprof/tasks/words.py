"""Offline English word lists for RULER-style keys, values and common-words extraction.

RULER draws its word keys (`adjective-noun`, e.g. "wary-lawyer") and its common-words pool from the
`wonderwords` package's adjective, noun and verb lists, and falls back to a downloaded English word
list for long contexts. headprof needs neither: these lists were written for this project (common,
unambiguous, lower-case English words, one token-ish each), and `haystack_vocabulary` supplies a
larger pool, derived deterministically from the built-in haystack, when a long cwe task needs more
distinct words than these lists hold.
"""

from __future__ import annotations

import re
from functools import lru_cache

ADJECTIVES = tuple(
    """
able absent active actual afraid agile alert alive amber ancient angry annual anxious apt arctic ashamed
automatic awake aware awful bad bald bare basic bent better big bitter black blank bland blind blond blue
blunt bold bored brave brief bright brisk broad broken brown busy calm capable careful casual cheap cheerful
chief chilly civil clean clear clever close cloudy clumsy coarse cold common complex cool correct costly
cosy crazy crisp cruel cubic curious curly curved cute daily damp dark dear decent deep dense direct dirty
distant divine dizzy double dry dull dusty eager early earnest easy elder electric elegant empty equal
even exact exotic expert faint fair faithful false famous fancy fast fat fierce final fine firm flat
fluffy foggy foolish formal fragile frank free fresh friendly frozen full funny fuzzy gentle giant glad
glossy golden good graceful grand grateful gray great greedy green grim gross guilty handy happy hard
harsh hasty healthy heavy helpful hidden high hollow holy honest hot huge humble hungry icy idle ill
immense inner innocent jolly joyful juicy keen kind large last late lazy lean legal level light likely
little lively local lonely long loose loud lovely low loyal lucky lunar mad magic main major mature
mean meek mellow merry mild minor misty modern modest moist moral muddy mute narrow nasty native near
neat nervous new nice noble noisy normal novel odd old open orange oval pale patient perfect pink
plain pleasant plump polite poor proper proud pure purple quick quiet rapid rare raw ready real
recent red regular remote rich right rigid ripe rough round royal rude rural rusty sad safe salty
scarce secret selfish serious shallow sharp shiny short shy silent silky silly simple sincere slim
slow small smart smooth snowy soft solar solid sour spare spicy square stable steady steep sticky
stiff still strange strict strong sturdy subtle sudden sunny super sweet swift tall tame tender
thick thin thirsty tidy tight tiny tired tough tragic tricky true ugly unique upper urban useful
usual vague vain valid vast velvet vivid warm wary weak wealthy weary wet white whole wide wild
windy wise witty wooden worthy yellow young zealous
""".split()
)

NOUNS = tuple(
    """
acorn actor adult advice agent airport album alley anchor angle animal ankle answer apple apron
arch arena army arrow artist attic aunt author avenue badge bakery ball balloon banana band bank
barn barrel basket bath beach beacon bean bear beard bed bee bell belt bench berry bicycle bird
blanket blossom board boat body bone book boot bottle boulder bowl box branch bread brick bridge
brother brush bucket buffalo bullet bundle butter button cabin cable cactus cake camel camera camp
canal candle cannon canoe canvas captain car carpet carrot castle cat cattle cave cellar chair
chalk channel chapel cheese cherry chest chicken child chimney circle city cliff clock cloud coat
coast coffee coin collar comet compass cook copper corner cottage cotton council country cousin
cow crab crane crayon creek crowd crown cup curtain cushion dancer daughter deer desert desk
diamond diary doctor dog doll dolphin donkey door dragon drawer dream drum duck eagle earth
editor egg elbow elephant elk engine envelope eye fabric face factory falcon farm farmer feather
fence ferry field finger fire fish flag flame flute fog folder forest fork fountain fox frog
fruit furnace galaxy garage garden gate giraffe glacier glass glove goat gold grape grass guitar
hall hammer hand harbor harp hat hawk heart hedge helmet hill hive honey hook horizon horn horse
hospital hotel house island ivory jacket jar jelly jewel judge jungle kettle key kingdom kitchen
kite knee knife ladder lake lamp lantern lawyer leaf lemon lens letter library lighthouse lily
lion lizard lobster lock locket magnet mango map marble market mask meadow melon merchant mirror
monkey moon mountain mouse museum music nail napkin needle nest net novel oak ocean office olive
onion orchard orchid otter owl oyster paddle page palace panda paper parcel parrot path peach
pearl pebble pencil penguin pepper piano picture pigeon pillow pilot pine pipe planet plate
plum pocket poem poet pond pony potato pottery prairie prince puddle pumpkin puppet puzzle queen
quilt rabbit radio rain raven reef ribbon rice ring river road robin rocket roof rope rose ruler
saddle sail sailor salad salmon sand sandal saucer scarf school scissors sea seal seed shadow
shark sheep shelf shell ship shoe shovel singer sister skirt sky sled snail snake soldier spider
sponge spoon spring square squirrel stable stage star station statue stone storm stove stream
street student sugar suitcase summit sun swan sweater table tailor teacher teapot temple tent
thimble thread throne thunder ticket tiger timber toast tomato tower town toy tractor train tree
truck trumpet tulip tunnel turtle twig umbrella valley vase village violin volcano wagon wallet
walnut wand wave whale wheat wheel whistle window wing wizard wolf wool worm yacht yard zebra
""".split()
)

VERBS = tuple(
    """
accept add admire admit agree allow amuse answer appear argue arrange arrive ask attach attend
bake balance bathe battle beg behave belong bless blink boil borrow bounce breathe brush build
bump bury buy calculate call camp carry carve catch change chase cheer chew choose clap clean
climb close coach collect comb command compare complain copy count cover crack crawl cross
cry cycle dance decide deliver describe design destroy develop dig discover dive divide drag
draw dream dress drift drink drive drop dry earn eat educate embrace empty enjoy enter escape
examine exercise explain explore fail fasten fetch fill film find fix float flow fly fold
follow forgive gather gaze glide glow grab greet grin grow guard guess guide hammer handle hang
happen harvest hate heal hear help hide hike hop hug hum hunt hurry imagine improve include
inform inspect invent invite iron jog join joke judge jump kick kneel knit knock label land
laugh launch lead learn lend lick lift like listen live load lock look love manage march mark
marry measure melt mend milk mix move nod notice obey observe offer open order organize pack
paddle paint park pass pause pedal perform pick pinch plant play please plug point polish pour
practice praise pray preach prefer prepare press print promise protect pull pump punch push
question race rain reach read record reduce reflect refuse relax remember remind repair repeat
reply report rescue rest return ride ring rinse roar roll row rub run rush sail scatter
scream search sew shake share shave shine shiver shout sing sit skate ski skip sleep slide
smell smile sneeze sniff snore solve sort sow speak spell spill spin splash spray sprint
squeeze stack stamp stare start stay steer step stir stitch stop store stretch study succeed
suggest supply surprise swim swing talk taste teach tease thank think throw tickle tidy trade
train travel trust try tumble turn type undress unlock unpack untie vanish visit wait walk
wander want warn wash watch wave weave weigh welcome whisper whistle win wink wish wonder work
worry wrap write yawn yell zoom
""".split()
)


def key_words() -> tuple[list[str], list[str]]:
    """Sorted unique adjectives and nouns: the parts of RULER-style `adjective-noun` keys."""
    return sorted(set(ADJECTIVES)), sorted(set(NOUNS))


def common_words() -> list[str]:
    """Sorted unique nouns, adjectives and verbs: the cwe pool (RULER: wonderwords nouns+adjectives+verbs)."""
    return sorted(set(NOUNS) | set(ADJECTIVES) | set(VERBS))


@lru_cache(maxsize=1)
def haystack_vocabulary() -> tuple[str, ...]:
    """Lower-case alphabetic words of 3-10 letters of the built-in haystack, sorted: the large cwe pool."""
    from headprof.probes import load_haystack

    text = " ".join(load_haystack("builtin"))
    return tuple(sorted({w for w in re.findall(r"\b[a-z]{3,10}\b", text)} | set(common_words())))
