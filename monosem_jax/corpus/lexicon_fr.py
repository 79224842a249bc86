"""French word lists and sentence templates for the synthetic story generator (pure data).

Nouns are (singular, plural, gender), verbs (infinitive, past participle, imparfait 3sg; every
verb takes "avoir"), adjectives (m, f, m pl, f pl) and always follow their noun.
"""

TOPICS = {
    "ocean": {
        "places": ("plage", "mer", "île", "port", "phare", "rivage", "océan"),
        "nouns": (
            ("mer", "mers", "f"), ("plage", "plages", "f"), ("vague", "vagues", "f"),
            ("coquillage", "coquillages", "m"), ("poisson", "poissons", "m"),
            ("crabe", "crabes", "m"), ("bateau", "bateaux", "m"), ("requin", "requins", "m"),
            ("baleine", "baleines", "f"), ("dauphin", "dauphins", "m"),
            ("pieuvre", "pieuvres", "f"), ("tortue", "tortues", "f"),
            ("mouette", "mouettes", "f"), ("île", "îles", "f"), ("phare", "phares", "m"),
            ("marin", "marins", "m"), ("ancre", "ancres", "f"), ("filet", "filets", "m"),
            ("rocher", "rochers", "m"), ("perle", "perles", "f"), ("trésor", "trésors", "m"),
            ("pirate", "pirates", "m"), ("corail", "coraux", "m"), ("port", "ports", "m"),
            ("voilier", "voiliers", "m"), ("algue", "algues", "f"),
            ("méduse", "méduses", "f"), ("homard", "homards", "m"), ("seau", "seaux", "m"),
            ("pingouin", "pingouins", "m"), ("galet", "galets", "m"),
            ("océan", "océans", "m"), ("rivage", "rivages", "m"),
        ),
        "verbs": (
            ("nager", "nagé", "nageait"), ("plonger", "plongé", "plongeait"),
            ("naviguer", "navigué", "naviguait"), ("pêcher", "pêché", "pêchait"),
            ("flotter", "flotté", "flottait"), ("ramer", "ramé", "ramait"),
            ("surfer", "surfé", "surfait"), ("barboter", "barboté", "barbotait"),
            ("bronzer", "bronzé", "bronzait"), ("creuser", "creusé", "creusait"),
            ("éclabousser", "éclaboussé", "éclaboussait"), ("voguer", "vogué", "voguait"),
        ),
        "adjs": (
            ("salé", "salée", "salés", "salées"), ("profond", "profonde", "profonds", "profondes"),
            ("mouillé", "mouillée", "mouillés", "mouillées"),
            ("sablonneux", "sablonneuse", "sablonneux", "sablonneuses"),
            ("tropical", "tropicale", "tropicaux", "tropicales"),
            ("agité", "agitée", "agités", "agitées"),
            ("écumeux", "écumeuse", "écumeux", "écumeuses"),
            ("venteux", "venteuse", "venteux", "venteuses"),
        ),
    },
    "forest": {
        "places": ("forêt", "bois", "clairière", "grotte", "rivière", "cabane", "étang",
                   "sentier"),
        "nouns": (
            ("forêt", "forêts", "f"), ("bois", "bois", "m"), ("arbre", "arbres", "m"),
            ("feuille", "feuilles", "f"), ("branche", "branches", "f"),
            ("hibou", "hiboux", "m"), ("écureuil", "écureuils", "m"), ("cerf", "cerfs", "m"),
            ("ours", "ours", "m"), ("renard", "renards", "m"), ("loup", "loups", "m"),
            ("champignon", "champignons", "m"), ("gland", "glands", "m"),
            ("bûche", "bûches", "f"), ("souche", "souches", "f"),
            ("sentier", "sentiers", "m"), ("fougère", "fougères", "f"), ("baie", "baies", "f"),
            ("buisson", "buissons", "m"), ("brindille", "brindilles", "f"),
            ("nid", "nids", "m"), ("hérisson", "hérissons", "m"),
            ("blaireau", "blaireaux", "m"), ("scarabée", "scarabées", "m"),
            ("papillon", "papillons", "m"), ("rivière", "rivières", "f"),
            ("étang", "étangs", "m"), ("grotte", "grottes", "f"), ("chêne", "chênes", "m"),
            ("sapin", "sapins", "m"), ("clairière", "clairières", "f"),
            ("cabane", "cabanes", "f"), ("tente", "tentes", "f"),
            ("cascade", "cascades", "f"), ("grenouille", "grenouilles", "f"),
            ("escargot", "escargots", "m"),
        ),
        "verbs": (
            ("grimper", "grimpé", "grimpait"), ("explorer", "exploré", "explorait"),
            ("marcher", "marché", "marchait"), ("camper", "campé", "campait"),
            ("cueillir", "cueilli", "cueillait"), ("ramper", "rampé", "rampait"),
            ("siffler", "sifflé", "sifflait"), ("randonner", "randonné", "randonnait"),
            ("flâner", "flâné", "flânait"), ("fouiller", "fouillé", "fouillait"),
            ("renifler", "reniflé", "reniflait"),
            ("pique-niquer", "pique-niqué", "pique-niquait"),
        ),
        "adjs": (
            ("feuillu", "feuillue", "feuillus", "feuillues"),
            ("sombre", "sombre", "sombres", "sombres"),
            ("sauvage", "sauvage", "sauvages", "sauvages"),
            ("ombragé", "ombragée", "ombragés", "ombragées"),
            ("moussu", "moussue", "moussus", "moussues"),
            ("ancien", "ancienne", "anciens", "anciennes"),
            ("épais", "épaisse", "épais", "épaisses"),
            ("touffu", "touffue", "touffus", "touffues"),
        ),
    },
    "space": {
        "places": ("lune", "planète", "fusée", "station", "cratère", "galaxie"),
        "nouns": (
            ("fusée", "fusées", "f"), ("étoile", "étoiles", "f"), ("lune", "lunes", "f"),
            ("planète", "planètes", "f"), ("astronaute", "astronautes", "m"),
            ("vaisseau", "vaisseaux", "m"), ("extraterrestre", "extraterrestres", "m"),
            ("comète", "comètes", "f"), ("galaxie", "galaxies", "f"),
            ("télescope", "télescopes", "m"), ("satellite", "satellites", "m"),
            ("météore", "météores", "m"), ("astéroïde", "astéroïdes", "m"),
            ("cratère", "cratères", "m"), ("soleil", "soleils", "m"),
            ("casque", "casques", "m"), ("robot", "robots", "m"),
            ("station", "stations", "f"), ("antenne", "antennes", "f"),
            ("drapeau", "drapeaux", "m"), ("moteur", "moteurs", "m"),
            ("navette", "navettes", "f"), ("constellation", "constellations", "f"),
            ("éclipse", "éclipses", "f"), ("combinaison", "combinaisons", "f"),
            ("capsule", "capsules", "f"), ("orbite", "orbites", "f"),
        ),
        "verbs": (
            ("voler", "volé", "volait"), ("décoller", "décollé", "décollait"),
            ("atterrir", "atterri", "atterrissait"), ("planer", "plané", "planait"),
            ("tourner", "tourné", "tournait"), ("voyager", "voyagé", "voyageait"),
            ("observer", "observé", "observait"), ("rebondir", "rebondi", "rebondissait"),
            ("briller", "brillé", "brillait"), ("filer", "filé", "filait"),
            ("graviter", "gravité", "gravitait"), ("scintiller", "scintillé", "scintillait"),
        ),
        "adjs": (
            ("étoilé", "étoilée", "étoilés", "étoilées"),
            ("lointain", "lointaine", "lointains", "lointaines"),
            ("cosmique", "cosmique", "cosmiques", "cosmiques"),
            ("lunaire", "lunaire", "lunaires", "lunaires"),
            ("argenté", "argentée", "argentés", "argentées"),
            ("immense", "immense", "immenses", "immenses"),
            ("poussiéreux", "poussiéreuse", "poussiéreux", "poussiéreuses"),
            ("scintillant", "scintillante", "scintillants", "scintillantes"),
        ),
    },
    "kitchen": {
        "places": ("cuisine", "boulangerie", "table", "four"),
        "nouns": (
            ("cuisine", "cuisines", "f"), ("gâteau", "gâteaux", "m"),
            ("biscuit", "biscuits", "m"), ("tarte", "tartes", "f"), ("crêpe", "crêpes", "f"),
            ("soupe", "soupes", "f"), ("pain", "pains", "m"), ("bol", "bols", "m"),
            ("cuillère", "cuillères", "f"), ("fourchette", "fourchettes", "f"),
            ("couteau", "couteaux", "m"), ("assiette", "assiettes", "f"),
            ("tasse", "tasses", "f"), ("casserole", "casseroles", "f"),
            ("poêle", "poêles", "f"), ("four", "fours", "m"), ("frigo", "frigos", "m"),
            ("évier", "éviers", "m"), ("tablier", "tabliers", "m"),
            ("recette", "recettes", "f"), ("citron", "citrons", "m"),
            ("banane", "bananes", "f"), ("cerise", "cerises", "f"), ("fraise", "fraises", "f"),
            ("pot", "pots", "m"), ("bocal", "bocaux", "m"), ("théière", "théières", "f"),
            ("plateau", "plateaux", "m"), ("pizza", "pizzas", "f"),
            ("croissant", "croissants", "m"), ("chef", "chefs", "m"),
            ("boulangerie", "boulangeries", "f"), ("table", "tables", "f"),
            ("confiture", "confitures", "f"),
        ),
        "verbs": (
            ("cuisiner", "cuisiné", "cuisinait"), ("mélanger", "mélangé", "mélangeait"),
            ("couper", "coupé", "coupait"), ("goûter", "goûté", "goûtait"),
            ("verser", "versé", "versait"), ("éplucher", "épluché", "épluchait"),
            ("pétrir", "pétri", "pétrissait"), ("fouetter", "fouetté", "fouettait"),
            ("remuer", "remué", "remuait"), ("laver", "lavé", "lavait"),
            ("préparer", "préparé", "préparait"), ("grignoter", "grignoté", "grignotait"),
            ("cuire", "cuit", "cuisait"),
        ),
        "adjs": (
            ("délicieux", "délicieuse", "délicieux", "délicieuses"),
            ("sucré", "sucrée", "sucrés", "sucrées"), ("chaud", "chaude", "chauds", "chaudes"),
            ("croustillant", "croustillante", "croustillants", "croustillantes"),
            ("collant", "collante", "collants", "collantes"),
            ("crémeux", "crémeuse", "crémeux", "crémeuses"),
            ("frais", "fraîche", "frais", "fraîches"),
            ("moelleux", "moelleuse", "moelleux", "moelleuses"),
            ("épicé", "épicée", "épicés", "épicées"),
        ),
    },
    "farm": {
        "places": ("ferme", "grange", "champ", "jardin", "verger", "étable", "pré",
                   "poulailler"),
        "nouns": (
            ("ferme", "fermes", "f"), ("vache", "vaches", "f"), ("cochon", "cochons", "m"),
            ("cheval", "chevaux", "m"), ("mouton", "moutons", "m"),
            ("chèvre", "chèvres", "f"), ("poule", "poules", "f"), ("coq", "coqs", "m"),
            ("canard", "canards", "m"), ("oie", "oies", "f"), ("grange", "granges", "f"),
            ("tracteur", "tracteurs", "m"), ("champ", "champs", "m"),
            ("barrière", "barrières", "f"), ("fermier", "fermiers", "m"),
            ("œuf", "œufs", "m"), ("citrouille", "citrouilles", "f"),
            ("carotte", "carottes", "f"), ("tomate", "tomates", "f"),
            ("pomme", "pommes", "f"), ("poney", "poneys", "m"), ("agneau", "agneaux", "m"),
            ("veau", "veaux", "m"), ("poussin", "poussins", "m"), ("âne", "ânes", "m"),
            ("épouvantail", "épouvantails", "m"), ("jardin", "jardins", "m"),
            ("verger", "vergers", "m"), ("étable", "étables", "f"), ("pré", "prés", "m"),
            ("poulailler", "poulaillers", "m"), ("graine", "graines", "f"),
            ("tournesol", "tournesols", "m"), ("chariot", "chariots", "m"),
        ),
        "verbs": (
            ("nourrir", "nourri", "nourrissait"), ("traire", "trait", "trayait"),
            ("planter", "planté", "plantait"), ("arroser", "arrosé", "arrosait"),
            ("récolter", "récolté", "récoltait"), ("labourer", "labouré", "labourait"),
            ("galoper", "galopé", "galopait"), ("semer", "semé", "semait"),
            ("ramasser", "ramassé", "ramassait"), ("brosser", "brossé", "brossait"),
            ("jardiner", "jardiné", "jardinait"), ("tondre", "tondu", "tondait"),
        ),
        "adjs": (
            ("boueux", "boueuse", "boueux", "boueuses"), ("mûr", "mûre", "mûrs", "mûres"),
            ("laineux", "laineuse", "laineux", "laineuses"),
            ("rouillé", "rouillée", "rouillés", "rouillées"),
            ("poilu", "poilue", "poilus", "poilues"), ("dodu", "dodue", "dodus", "dodues"),
            ("herbeux", "herbeuse", "herbeux", "herbeuses"),
            ("rustique", "rustique", "rustiques", "rustiques"),
        ),
    },
    "school": {
        "places": ("école", "classe", "bibliothèque", "cour"),
        "nouns": (
            ("école", "écoles", "f"), ("maîtresse", "maîtresses", "f"),
            ("classe", "classes", "f"), ("bureau", "bureaux", "m"), ("chaise", "chaises", "f"),
            ("livre", "livres", "m"), ("crayon", "crayons", "m"), ("gomme", "gommes", "f"),
            ("règle", "règles", "f"), ("cartable", "cartables", "m"),
            ("cahier", "cahiers", "m"), ("leçon", "leçons", "f"), ("élève", "élèves", "m"),
            ("cour", "cours", "f"), ("toboggan", "toboggans", "m"),
            ("balançoire", "balançoires", "f"), ("cloche", "cloches", "f"),
            ("bibliothèque", "bibliothèques", "f"), ("lettre", "lettres", "f"),
            ("feutre", "feutres", "m"), ("tableau", "tableaux", "m"),
            ("autocollant", "autocollants", "m"), ("puzzle", "puzzles", "m"),
            ("globe", "globes", "m"), ("dessin", "dessins", "m"), ("devoir", "devoirs", "m"),
            ("alphabet", "alphabets", "m"), ("camarade", "camarades", "m"),
            ("trousse", "trousses", "f"), ("récréation", "récréations", "f"),
        ),
        "verbs": (
            ("lire", "lu", "lisait"), ("écrire", "écrit", "écrivait"),
            ("dessiner", "dessiné", "dessinait"), ("peindre", "peint", "peignait"),
            ("apprendre", "appris", "apprenait"), ("chanter", "chanté", "chantait"),
            ("écouter", "écouté", "écoutait"), ("colorier", "colorié", "coloriait"),
            ("étudier", "étudié", "étudiait"), ("réciter", "récité", "récitait"),
            ("épeler", "épelé", "épelait"), ("gribouiller", "gribouillé", "gribouillait"),
        ),
        "adjs": (
            ("sage", "sage", "sages", "sages"),
            ("studieux", "studieuse", "studieux", "studieuses"),
            ("bruyant", "bruyante", "bruyants", "bruyantes"),
            ("silencieux", "silencieuse", "silencieux", "silencieuses"),
            ("coloré", "colorée", "colorés", "colorées"),
            ("facile", "facile", "faciles", "faciles"),
            ("difficile", "difficile", "difficiles", "difficiles"),
            ("rangé", "rangée", "rangés", "rangées"),
            ("intelligent", "intelligente", "intelligents", "intelligentes"),
        ),
    },
}

GIRL_NAMES = (
    "Léa", "Chloé", "Manon", "Camille", "Inès", "Zoé", "Élise", "Juliette", "Margaux",
    "Amélie", "Mathilde", "Céline", "Aurélie", "Clémence", "Louise", "Jeanne", "Agathe",
    "Lucie", "Capucine", "Maëlle", "Anaïs", "Noémie", "Élodie", "Margot", "Sophie",
)
BOY_NAMES = (
    "Hugo", "Lucas", "Louis", "Jules", "Théo", "Nathan", "Mathis", "Noé", "Gabriel",
    "Arthur", "Raphaël", "Antoine", "Baptiste", "Clément", "Étienne", "Félix", "Gaspard",
    "Léon", "Maxime", "Pierre", "Quentin", "Rémi", "Thibault", "Victor", "Benoît",
)

# (word, grammatical gender): the hero's pronoun follows the word's gender.
KINDS = (("fille", "f"), ("garçon", "m"), ("fille", "f"), ("garçon", "m"), ("lapin", "m"),
         ("chaton", "m"), ("chiot", "m"), ("souris", "f"), ("coccinelle", "f"))
FAMILY = (("maman", "f"), ("papa", "m"), ("mamie", "f"), ("papi", "m"), ("sœur", "f"),
          ("frère", "m"))
GENERAL_ADJS = (
    ("rouge", "rouge"), ("bleu", "bleue"), ("vert", "verte"), ("jaune", "jaune"),
    ("brillant", "brillante"), ("doré", "dorée"), ("magique", "magique"),
    ("étrange", "étrange"), ("rond", "ronde"), ("énorme", "énorme"), ("drôle", "drôle"),
)

# Emotions as (masculine, feminine).
EMO_POS = (("heureux", "heureuse"), ("content", "contente"), ("fier", "fière"),
           ("joyeux", "joyeuse"), ("ravi", "ravie"), ("calme", "calme"))
EMO_NEG = (("triste", "triste"), ("effrayé", "effrayée"), ("inquiet", "inquiète"),
           ("fâché", "fâchée"), ("nerveux", "nerveuse"), ("seul", "seule"),
           ("jaloux", "jalouse"), ("timide", "timide"), ("surpris", "surprise"),
           ("curieux", "curieuse"))
EMO_ADVERBS = ("joyeusement", "fièrement", "tristement", "timidement")
EMO_NOUNS = ("joie", "peur", "tristesse", "colère")
EMOTION_WORDS = frozenset(
    [w for pair in EMO_POS + EMO_NEG for w in pair] + list(EMO_ADVERBS + EMO_NOUNS))

NUMBER_WORDS = ("un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
                "onze", "douze", "vingt")
COUNTABLE = NUMBER_WORDS[1:12] + ("vingt",)
# "un"/"une" are articles; only counting passages tag "un" (explicitly).
SCANNED_NUMBER_WORDS = frozenset(NUMBER_WORDS[1:])
NEGATION_WORDS = frozenset({"ne", "n'", "pas", "jamais", "rien", "personne", "non"})

SECTIONS = {
    "open": (
        "Il était une fois {une_petite_kind} qui s'appelait {hero}.",
        "Il y a longtemps, vivait {une_petite_kind} nommé{e} {hero}.",
        "Un jour, {une_petite_kind} qui s'appelait {hero} s'est réveillé{e} très tôt.",
        "Il était une fois {une_petite_kind} de {age} ans qui s'appelait {hero}.",
    ),
    "like": (
        "{Il} aimait beaucoup {le_place}.",
        "{Hero} adorait {verb}.",
        "{Il} aimait les {nouns} plus que tout.",
        "{Hero} rêvait d'aller {au_place}.",
        "{Hero} voulait toujours {verb}.",
    ),
    "habit": (
        "Chaque jour, {il} {verbait} près {du_place}.",
        "{Il} allait souvent {au_place} avec {sa_famille}.",
        "{Hero} aimait {verb} avec {sa_famille}.",
        "{Il} connaissait beaucoup {de_rplaces}, mais {il} préférait {le_place}.",
    ),
    "event": (
        "Un jour, {hero} est allé{e} {au_place} avec {sa_famille}.",
        "Un matin, {hero} a vu {un_noun2} {adj_noun2} près {du_place}.",
        "Un jour, {il} a trouvé {un_noun2} {gadj_noun2}.",
    ),
    "count": (
        "{Il} a compté {count} {rnouns}.",
        "Il y avait {num} {rnouns_adj} près {du_place}.",
        "{Il} a compté les {nouns} : {count}. Il y en avait {last} !",
    ),
    "meet": (
        "Puis {il} a rencontré {son_ami} {friend}.",
        "{Friend} est venu{fe} jouer avec {lui}.",
    ),
    "talk": (
        '{Hero} a dit : "{@say}"',
        '"{@say}" a dit {friend}.',
        '{Friend} a demandé : "{@ask}" "{@answer}" a répondu {hero}.',
        '{Hero} a demandé à {friend} : "{@ask}" "{@answer}" a répondu {friend}.',
        '{Friend} a demandé : "{@wonder}"',
        '{Hero} a crié : "{@say}"',
    ),
    "say": (
        "Regarde {le_noun2} !",
        "J'aime beaucoup {le_place} !",
        "Quelle joie !",
        "On va {verb} ensemble !",
        "Je ne veux pas {verb} aujourd'hui !",
        "Il y a {num} {rnouns_adj} ici !",
        "Non, je n'ai pas peur !",
    ),
    "ask": (
        "Tu veux {verb} avec moi ?",
        "On peut aller {au_place} ?",
        "Tu aimes les {nouns} ?",
    ),
    "wonder": (
        "Où est {le_noun} ?",
        "Pourquoi es-tu triste ?",
    ),
    "answer": (
        "Oui, allons-y !",
        "Non, merci !",
        "D'accord !",
        "Oui, bien sûr !",
        "Non, pas maintenant !",
    ),
    "problem": (
        "Mais {le_noun} était trop {adj_noun}, et {hero} ne pouvait pas {verb}.",
        "Puis {hero} a perdu {son_noun}. {Il} a cherché partout, mais {il} n'a rien trouvé.",
        "Personne ne savait où était {le_noun2}.",
        "{Hero} n'avait jamais vu {un_noun2} aussi {adj_noun2}.",
        "{Hero} ne savait pas {verb}. {Il} était {emo_neg}.",
    ),
    "fix": (
        "Alors {friend} a eu une idée.",
        '"N\'aie pas peur", a dit {friend}. "On peut {verb} ensemble."',
        "{Friend} a aidé {hero} à trouver {le_noun}.",
    ),
    "end": (
        "{Hero} était très {emo_pos}.",
        "{Hero} a souri {emo_adv}.",
        "À partir de ce jour, {hero} et {friend} {verbaient} {au_place} tous les jours.",
        "{Hero} n'a jamais oublié {le_noun} {adj_noun}.",
        "Ensemble, {ils} ont {verbed} toute la journée.",
        "C'était la plus belle journée de sa vie.",
        "{Hero} et {friend} ont joué ensemble jusqu'au soir.",
    ),
}

PLAN = (
    (("open", 1.0), ("like", 1.0), ("habit", 0.6)),
    (("event", 1.0), ("meet", 0.85), ("talk", 0.9), ("count", 0.55), ("talk", 0.4)),
    (("problem", 0.7), ("fix", 0.9), ("end", 1.0), ("end", 0.6)),
)
